"""One update arm: from a stage checkpoint, learn a fact set with one placement strategy.

Every arm (full fine-tuning, LoRA, and each neuron strategy) goes through the same training routine
with the same settings; only what may change differs. Returns the arm's metrics row and its
per-epoch curve (old-knowledge retention and new-fact accuracy after every epoch).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pandas as pd
import torch

from workflow_scripts.models.architectures import linear_modules
from workflow_scripts.methods.neurons import StrategyInputs, neuron_mask, resolve_k
from workflow_scripts.training.masks import only_tracked, parameter_masks
from workflow_scripts.training.train import TrainConfig, train
from workflow_scripts.updates.evaluate import evaluate_update
from workflow_scripts.updates.lora import LoraSettings, add_lora, merge_lora

NON_NEURON_ARMS = ("full", "lora")


@dataclass(frozen=True)
class Arm:
    strategy: str  # "full", "lora", or a name in strategies.STRATEGIES
    k: int | float | None = None  # neurons (count, or fraction of all); ignored by full and LoRA
    seed: int = 0


def run_arm(
    model,
    tokenizer,
    arm: Arm,
    old: pd.DataFrame,
    new: pd.DataFrame,
    known_before: set[int],
    cfg: TrainConfig,
    usage: dict[str, dict[str, torch.Tensor] | None],
    target_column: str = "target_true",
    lora: LoraSettings = LoraSettings(),
    curves: bool = True,
) -> tuple[dict, pd.DataFrame]:
    """Train ``model`` (in place) on ``new`` with the arm; ``usage`` holds 'old', 'new', 'history'."""
    modules = linear_modules(model)
    total = sum(m.out_features for m in modules)
    trainable, update_mask, k = None, None, None
    if arm.strategy == "lora":
        model, trainable = add_lora(model, lora)
    elif arm.strategy != "full":
        if arm.k is None:
            raise ValueError(f"strategy {arm.strategy!r} needs k")
        k = resolve_k(arm.k, total)
        inputs = StrategyInputs({m.name: m.out_features for m in modules}, **usage)
        update_mask = parameter_masks(model, neuron_mask(arm.strategy, inputs, k, arm.seed))
        trainable = only_tracked(model)
    curve, eval_seconds = [], 0.0

    def on_epoch(epoch, record):
        nonlocal eval_seconds
        start = time.perf_counter()
        row = evaluate_update(model, tokenizer, old, new, known_before, target_column)
        curve.append({"epoch": epoch, "loss": record["loss"], **row})
        eval_seconds += time.perf_counter() - start

    start = time.perf_counter()
    history = train(model, tokenizer, new.prompt.tolist(), new[target_column].tolist(), cfg, trainable=trainable,
                    update_mask=update_mask, on_epoch=on_epoch if curves else None)
    seconds = time.perf_counter() - start - eval_seconds
    if arm.strategy == "lora":
        merge_lora(model)
    if curves:  # the last epoch's evaluation is the arm's result (a merged adapter computes the same)
        row = {key: value for key, value in curve[-1].items() if key not in ("epoch", "loss")}
    else:
        row = evaluate_update(model, tokenizer, old, new, known_before, target_column)
        curve.append({"epoch": history[-1]["epoch"], "loss": history[-1]["loss"], **row})
    row.update(strategy=arm.strategy, k=k if k is not None else total, k_fraction=(k or total) / total,
               seed=arm.seed, lr=cfg.lr, epochs=cfg.epochs, train_seconds=seconds)
    return row, pd.DataFrame(curve)
