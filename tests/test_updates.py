"""Update arms: LoRA through the one training routine, and the arm metrics."""

import math

import pytest
import torch

from workflow_scripts.facts.schema import flat_facts
from workflow_scripts.metrics import accuracy
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
