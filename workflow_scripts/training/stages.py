"""Training stages as plain functions: fine-tune a model on a slice of facts, record usage, save.

(The slices themselves come from ``scenarios.slices``, the one seeded slicer.)"""

from __future__ import annotations

import logging
from typing import Sequence

import pandas as pd

from workflow_scripts.facts.schema import flat_facts, read_facts
from workflow_scripts.io import atomic_dir, write_parquet
from workflow_scripts.evaluation import score_targets
from workflow_scripts.models.loading import load_model
from workflow_scripts.training.plugins import RecordUsage, StopAtAccuracy
from workflow_scripts.training.train import TrainConfig, train
from workflow_scripts.training.usage import UsageTracker, save_usage

log = logging.getLogger(__name__)


def finetune_on_slice(
    model_dir: str,
    facts_path: str,
    slices_path: str,
    slice_name: str,
    cfg: TrainConfig,
    history_path: str,
    out_model_dir: str | None = None,
    usage_path: str | None = None,
    known_path: str | None = None,
    score_slices: Sequence[str] | None = None,
    stop_at_accuracy: float | None = None,
) -> pd.DataFrame:
    """Full fine-tune on one slice (prompt + target_true); optionally save model, usage and the
    per-fact result after training (``known``: teacher-forced exact match on ``score_slices``,
    default the trained slice; columns case_id, slice, correct, ...). ``stop_at_accuracy`` stops after
    the epoch where the slice's training accuracy reaches it."""
    model, tokenizer = load_model(model_dir, dtype="float32")
    slices = pd.read_parquet(slices_path)
    ids = set(slices.case_id[slices.slice == slice_name])
    records = read_facts(facts_path)
    flat = flat_facts([r for r in records if r["case_id"] in ids])
    if flat.empty:
        raise ValueError(f"slice {slice_name!r} is empty")
    prompts, targets = flat.prompt.tolist(), flat.target_true.tolist()
    plugins, tracker = [], None
    if stop_at_accuracy is not None:
        plugins.append(StopAtAccuracy(tokenizer, prompts, targets, stop_at_accuracy))
    if usage_path:
        tracker = UsageTracker(model)
        plugins.append(RecordUsage(tracker))
    history = train(model, tokenizer, prompts, targets, cfg, plugins)
    if tracker is not None:
        save_usage(tracker.scores(), usage_path, {"slice": slice_name, "facts": len(flat)})
    table = pd.DataFrame(history).assign(slice=slice_name, facts=len(flat))
    write_parquet(table, history_path)
    if known_path:
        scored = slices[slices.slice.isin(list(score_slices or [slice_name]))]
        names = dict(zip(scored.case_id, scored.slice))
        facts = flat_facts([r for r in records if r["case_id"] in names])
        scores = score_targets(model, tokenizer, facts.prompt.tolist(), facts.target_true.tolist())
        known = pd.concat([facts[["case_id"]].reset_index(drop=True), scores], axis=1)
        known.insert(1, "slice", known.case_id.map(names))
        write_parquet(known, known_path)
        for name, part in known.groupby("slice"):
            log.info("after fine-tuning on %s: %.1f%% of %s known", slice_name, 100 * part.correct.mean(), name)
    if out_model_dir:
        with atomic_dir(out_model_dir) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
    return table
