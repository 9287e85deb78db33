"""Update arms: LoRA through the one training routine, and the arm metrics."""

import math

import pytest
import torch

from workflow_scripts.facts.schema import flat_facts
from workflow_scripts.evaluation import accuracy
from workflow_scripts.models.loading import load_model
from workflow_scripts.training.train import TrainConfig, train
from workflow_scripts.updates.evaluate import evaluate_update, harmonic_mean
from workflow_scripts.updates.lora import LoraSettings, add_lora, merge_lora


def test_harmonic_mean():
    assert harmonic_mean([1, 1, 1]) == 1
    assert harmonic_mean([0.5, 1.0, 1.0]) == pytest.approx(0.75)
    assert harmonic_mean([0.9, 0.0, 1.0]) == 0.0
    assert math.isnan(harmonic_mean([0.9, float("nan"), 1.0]))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_lora_trains_only_adapters_and_learns(tiny_model_dirs, starter, family):
    model, tok = load_model(tiny_model_dirs[family])
    facts = flat_facts(starter[:12])
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    model, trainable = add_lora(model, LoraSettings(r=8, alpha=16))
    train(model, tok, facts.prompt.tolist(), facts.target_true.tolist(),
          TrainConfig(lr=3e-3, epochs=100, batch_size=6, stop_at_accuracy=1.0), trainable=trainable)
    for n, p in model.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p.detach(), base[n.replace(".base_layer", "")]), n
    learned = accuracy(model, tok, facts.prompt.tolist(), facts.target_true.tolist())
    assert learned >= 0.9
    merged = merge_lora(model)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    assert accuracy(merged, tok, facts.prompt.tolist(), facts.target_true.tolist()) == learned


def test_evaluate_update_after_learning_new_facts(tiny_model_dirs, starter):
    model, tok = load_model(tiny_model_dirs["gpt2"])
    flat = flat_facts(starter[:30])
    old, new = flat.iloc[:15], flat.iloc[15:]
    cfg = TrainConfig(lr=3e-3, epochs=60, batch_size=8, stop_at_accuracy=1.0)
    train(model, tok, old.prompt.tolist(), old.target_true.tolist(), cfg)
    known = set(old.case_id)
    row = evaluate_update(model, tok, old, new, known)
    assert row["acc_old"] == 1.0 and row["retention_old"] == 1.0 and row["acc_new"] < 0.5
    train(model, tok, new.prompt.tolist(), new.target_true.tolist(), cfg)
    row = evaluate_update(model, tok, old, new, known)
    assert row["acc_new"] == 1.0
    assert row["n_old"] == 15 and row["n_new"] == 15 and row["n_retained_base"] == 15
    assert 0 <= row["harmonic_mean"] <= 1


@pytest.mark.parametrize("strategy,k", [("full", None), ("lora", None), ("plastic", 40), ("stubborn", 0.2), ("random", 40)])
def test_every_arm_runs_through_the_same_routine(tiny_model_dirs, starter, strategy, k):
    from workflow_scripts.models.architectures import linear_modules
    from workflow_scripts.updates.arms import Arm, run_arm

    model, tok = load_model(tiny_model_dirs["gpt2"])
    flat = flat_facts(starter[:20])
    old, new = flat.iloc[:10], flat.iloc[10:]
    usage_old = {m.name: torch.rand(m.out_features) for m in linear_modules(model)}
    cfg = TrainConfig(lr=3e-3, epochs=3, batch_size=5)
    row, curve = run_arm(model, tok, Arm(strategy, k, seed=1), old, new, set(old.case_id), cfg,
                         {"old": usage_old, "new": None, "history": None})
    total = sum(m.out_features for m in linear_modules(model))
    expected_k = {"plastic": 40, "random": 40, "stubborn": round(0.2 * total)}.get(strategy, total)
    assert row["strategy"] == strategy and row["k"] == expected_k
    assert row["epochs"] == 3 and row["lr"] == 3e-3
    assert list(curve.epoch) == [1, 2, 3]
    assert {"acc_old", "retention_old", "acc_new", "acc_gen", "harmonic_mean"} <= set(row)
    # after the run the model is a plain model again (LoRA merged)
    assert not any("lora_" in n for n, _ in model.named_parameters())
    assert len(linear_modules(model)) == 8


def test_a_neuron_strategy_without_k_is_refused(tiny_model_dirs, starter):
    from workflow_scripts.updates.arms import Arm, run_arm

    model, tok = load_model(tiny_model_dirs["gpt2"])
    flat = flat_facts(starter[:4])
    with pytest.raises(ValueError, match="needs k"):
        run_arm(model, tok, Arm("plastic"), flat, flat, set(), TrainConfig(epochs=1), {"old": None})
