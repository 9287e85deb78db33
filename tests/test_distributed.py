"""Data-parallel training (``training.processes``): two processes on the CPU (gloo) learn what one
process learns from the same global batches, and plugins keep holding.

Adam divides each gradient entry by its own running magnitude, so entries whose gradient is close
to zero turn rounding differences (a batch split in two sums its gradient in another order) into
update differences of up to a fraction of the learning rate (measured here: about 0.016 lr after
four steps, the same with or without packing). The runs therefore use a small learning rate (1e-5)
and four steps, so that rtol 1e-5 / atol 1e-6 on the weights keeps a sixfold margin while training
moves them 40 times further than atol; the first step's summed gradients, which carry no such
amplification, are compared tightly. Each two-process run spawns a worker (a few seconds)."""

import pytest
import torch

from workflow_scripts.facts.schema import flat_facts
from workflow_scripts.methods.neurons import StrategyInputs, neuron_mask
from workflow_scripts.models.architectures import linear_modules
from workflow_scripts.models.loading import load_model
from workflow_scripts.training.masks import parameter_masks, tracked_parameter_names
from workflow_scripts.training.plugins import (
    EpochCallback,
    LoraAdapters,
    OnlyParameters,
    RecordUsage,
    StopAtAccuracy,
    TrainingPlugin,
    UpdateMask,
)
from workflow_scripts.training.train import TrainConfig, train
from workflow_scripts.training.usage import UsageTracker

RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture
def facts(starter):
    # 22 facts in batches of 7: 7, 7, 7 and 1, so the last batch leaves one of two processes without facts
    return flat_facts(starter[:24]).iloc[:22]


class FirstGradients(TrainingPlugin):
    """Keeps the (summed) gradients of the first step; rank 0 only."""

    def __init__(self):
        self.grads = {}

    def prepare(self, model):
        self.names = {p: n for n, p in model.named_parameters()}

    def after_step(self, model, step):
        if step == 1:
            self.grads = {self.names[p]: p.grad.clone() for p in model.parameters() if p.grad is not None}

    def replica(self):
        return None


def weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def max_difference(a, b):
    return max((a[n] - b[n]).abs().max().item() for n in a)


def assert_close(a, b, rtol=RTOL, atol=ATOL):
    assert a.keys() == b.keys()
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=rtol, atol=atol, msg=lambda m, n=n: f"{n}: {m}")


def test_two_processes_learn_the_weights_usage_and_losses_of_one(tiny_model_dirs, facts):
    prompts, targets = facts.prompt.tolist(), facts.target_true.tolist()
    runs = {}
    for processes in (1, 2):
        model, tok = load_model(tiny_model_dirs["llama"])  # no dropout
        start = weights(model)
        tracker, first = UsageTracker(model), FirstGradients()
        history = train(model, tok, prompts, targets,
                        TrainConfig(lr=1e-5, epochs=1, batch_size=7, processes=processes),
                        [RecordUsage(tracker), first])
        runs[processes] = weights(model), tracker.scores(), first.grads, [h["loss"] for h in history]
    (w1, u1, g1, loss1), (w2, u2, g2, loss2) = runs[1], runs[2]
    assert max_difference(w1, start) > 10 * ATOL  # it trained
    for n in g1:  # the global batch's gradient, from two halves (to rounding, relative to its size)
        torch.testing.assert_close(g2[n], g1[n], rtol=1e-5, atol=1e-5 * g1[n].abs().max().item())
    assert_close(w2, w1)
    assert loss2 == pytest.approx(loss1, rel=1e-6)  # the global batches' losses
    for kind in u1:
        for score in ("sum_abs", "sum_sq"):
            assert_close(u2[kind][score], u1[kind][score], rtol=1e-5, atol=0)
        scale = max(v.abs().max().item() for v in u1[kind]["sum_abs"].values())
        assert_close(u2[kind]["abs_sum"], u1[kind]["abs_sum"], rtol=1e-5, atol=1e-6 * scale)
    print(f"max |w1 - w2| = {max_difference(w1, w2):.2e}, max |g1 - g2| = {max_difference(g1, g2):.2e} "
          f"(max |g1| = {max(g.abs().max().item() for g in g1.values()):.2e})")


def test_lora_adapters_on_padded_batches_in_two_processes_match_one_process(tiny_model_dirs, facts):
    prompts, targets = facts.prompt.tolist(), facts.target_true.tolist()
    runs = {}
    for processes in (1, 2):
        model, tok = load_model(tiny_model_dirs["llama"])
        start = weights(model)
        train(model, tok, prompts, targets,
              TrainConfig(lr=1e-5, epochs=1, batch_size=7, pack=False, processes=processes),
              [LoraAdapters(r=4, alpha=8, dropout=0.0)])
        runs[processes] = weights(model)
    assert runs[1].keys() == start.keys()  # merged back into plain layers
    assert max_difference(runs[1], start) > 10 * ATOL
    assert_close(runs[2], runs[1])
    print(f"max |w1 - w2| = {max_difference(runs[1], runs[2]):.2e}")


def test_masked_entries_and_frozen_parameters_stay_bit_identical_in_two_processes(tiny_model_dirs, facts):
    model, tok = load_model(tiny_model_dirs["gpt2"])  # with dropout: each process draws its own masks
    widths = {m.name: m.out_features for m in linear_modules(model)}
    mask = neuron_mask("plastic", StrategyInputs(widths, old={n: torch.rand(w) for n, w in widths.items()}), k=40)
    pmasks = parameter_masks(model, mask)
    before = weights(model)
    epochs = []
    train(model, tok, facts.prompt.tolist(), facts.target_true.tolist(),
          TrainConfig(lr=1e-2, epochs=2, batch_size=7, weight_decay=0.1, processes=2),
          [OnlyParameters(tracked_parameter_names(model)), UpdateMask(pmasks),
           EpochCallback(lambda m, e, r: epochs.append(e))])  # a closure: stays in rank 0
    changed = 0
    for name, p in model.named_parameters():
        if name in pmasks:
            frozen = ~pmasks[name].expand_as(p)
            assert torch.equal(p.detach()[frozen], before[name][frozen]), name
            changed += int((p.detach() != before[name]).any())
        else:  # embeddings, norms, head
            assert torch.equal(p.detach(), before[name]), name
    assert changed > 0 and epochs == [1, 2]
    assert all(p.requires_grad for p in model.parameters())  # restored, as with one process


def test_a_plugin_that_cannot_run_in_several_processes_fails_before_any_starts(tiny_model_dirs, facts):
    model, tok = load_model(tiny_model_dirs["llama"])

    class Unknown(TrainingPlugin):
        def after_step(self, model, step):
            pass

    cfg = TrainConfig(epochs=1, processes=2)
    with pytest.raises(ValueError, match="Unknown cannot run in several processes"):
        train(model, tok, facts.prompt.tolist(), facts.target_true.tolist(), cfg, [Unknown()])
    with pytest.raises(ValueError, match="OnlyParameters cannot be sent"):
        train(model, tok, facts.prompt.tolist(), facts.target_true.tolist(), cfg,
              [OnlyParameters(lambda name: "mlp" in name)])
    assert StopAtAccuracy(tok, [], []).replica() is None
    with pytest.raises(ValueError, match="processes"):
        TrainConfig(processes=0)
