"""Placement strategies: exactly k neurons, and the right ones."""

import pytest
import torch

from workflow_scripts.methods.neurons import STRATEGIES, StrategyInputs, neuron_mask, resolve_k

WIDTHS = {"b0.attn": 4, "b0.mlp": 8, "b1.attn": 4, "b1.mlp": 8}


def usage(values):
    out, it = {}, iter(values)
    for name, w in WIDTHS.items():
        out[name] = torch.tensor([next(it) for _ in range(w)], dtype=torch.float32)
    return out


OLD = usage(range(24))  # neuron i has old usage i
NEW = usage([23 - i for i in range(24)])  # reversed
HIST = usage([(7 * i) % 24 for i in range(24)])
INPUTS = StrategyInputs(WIDTHS, old=OLD, new=NEW, history=HIST)


def chosen(mask):
    return torch.cat([mask[n] for n in WIDTHS]).nonzero().flatten().tolist()


@pytest.mark.parametrize("name", sorted(set(STRATEGIES) - {"all_tracked"}))
@pytest.mark.parametrize("k", [1, 5, 12])
def test_exactly_k_neurons(name, k):
    mask = neuron_mask(name, INPUTS, k, seed=3)
    assert set(mask) == set(WIDTHS) and all(mask[n].shape == (w,) for n, w in WIDTHS.items())
    assert sum(int(m.sum()) for m in mask.values()) == k


def test_the_right_neurons():
    assert chosen(neuron_mask("stubborn", INPUTS, 3)) == [21, 22, 23]
    assert chosen(neuron_mask("plastic", INPUTS, 3)) == [0, 1, 2]
    assert chosen(neuron_mask("candidate", INPUTS, 3)) == [0, 1, 2]
    assert chosen(neuron_mask("free_b", INPUTS, 3)) == [21, 22, 23]
    # specific: new usage is highest where old is lowest, so removing the top-3 old changes nothing
    assert chosen(neuron_mask("specific", INPUTS, 3)) == [0, 1, 2]
    hist_top = sorted(range(24), key=lambda i: -((7 * i) % 24))[:3]
    assert chosen(neuron_mask("lottery", INPUTS, 3)) == sorted(hist_top)
    assert chosen(neuron_mask("non_lottery", INPUTS, 1)) == [0]  # (7*0) % 24 == 0


def test_specific_removes_old_top_k():
    same = StrategyInputs(WIDTHS, old=OLD, new=OLD, history=OLD)
    assert chosen(neuron_mask("specific", same, 3)) == [18, 19, 20]
    assert chosen(neuron_mask("specific_general", same, 3)) == [18, 19, 20]


def test_all_tracked_selects_everything():
    assert len(chosen(neuron_mask("all_tracked", INPUTS, 1))) == 24


def test_random_is_seeded_and_uniform():
    a = neuron_mask("random", INPUTS, 6, seed=1)
    assert chosen(a) == chosen(neuron_mask("random", INPUTS, 6, seed=1))
    assert chosen(a) != chosen(neuron_mask("random", INPUTS, 6, seed=2))
    counts = torch.zeros(24)
    for seed in range(3000):
        counts += torch.cat([m.float() for m in neuron_mask("random", INPUTS, 6, seed=seed).values()])
    # each neuron is chosen with probability 6/24, whatever its module's width
    assert torch.allclose(counts / 3000, torch.full((24,), 0.25), atol=0.035)


def test_bad_requests_are_named():
    with pytest.raises(ValueError, match="unknown strategy 'busiest'"):
        neuron_mask("busiest", INPUTS, 3)
    with pytest.raises(ValueError, match="between 1 and the number of neurons \\(24\\)"):
        neuron_mask("stubborn", INPUTS, 25)
    with pytest.raises(ValueError, match="needs history usage"):
        neuron_mask("lottery", StrategyInputs(WIDTHS, old=OLD), 3)


def test_resolve_k():
    assert resolve_k(0.25, 24) == 6 and resolve_k(5, 24) == 5


def test_k_of_one_means_every_neuron_not_one_neuron():
    assert resolve_k(1.0, 24) == 24 and resolve_k(1, 24) == 24 and resolve_k(2, 24) == 2
    with pytest.raises(ValueError, match="positive"):
        resolve_k(0, 24)


def test_specific_refuses_k_over_half():
    with pytest.raises(ValueError, match="k <= half of all neurons \\(12\\)"):
        neuron_mask("specific", INPUTS, 13)
