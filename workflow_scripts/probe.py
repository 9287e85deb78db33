"""Familiarity probe: score the base model on every fact, for ``target_true`` and ``target_new``.

The output is the known/unknown split every experiment starts from: one row per (fact, target) with
whether the whole target is the teacher-forced argmax, and the first target token's probability and
rank, and the mean log-probability of the target.
"""

from __future__ import annotations

import logging

import pandas as pd
import torch

from workflow_scripts.facts.schema import flat_facts, read_facts
from workflow_scripts.io import write_parquet
from workflow_scripts.evaluation import score_targets
from workflow_scripts.models.loading import load_model

log = logging.getLogger(__name__)


def probe_records(model, tokenizer, records: list[dict], factset: str, batch_size: int = 32) -> pd.DataFrame:
    flat = flat_facts(records)
    parts = []
    for kind in ("true", "new"):
        part = flat[["case_id", "relation_id", "subject", "prompt"]].copy()
        part.insert(1, "factset", factset)
        part["target_kind"] = kind
        part["target"] = flat[f"target_{kind}"]
        parts.append(part)
    table = pd.concat(parts, ignore_index=True)
    scores = score_targets(model, tokenizer, table["prompt"].tolist(), table["target"].tolist(), batch_size, progress=True)
    return pd.concat([table, scores], axis=1)


def probe_familiarity(model_dir: str, facts_path: str, out_path: str, factset: str, batch_size: int = 32) -> pd.DataFrame:
    model, tokenizer = load_model(model_dir)
    records = read_facts(facts_path)
    with torch.inference_mode():
        table = probe_records(model, tokenizer, records, factset, batch_size)
    write_parquet(table, out_path)
    known = table[table.target_kind == "true"].correct.mean()
    log.info("%s: %d facts, %.1f%% known (target_true exact match)", factset, len(records), 100 * known)
    return table
