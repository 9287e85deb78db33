"""Metrics of one update arm, all with the one exact-match metric.

- ``acc_old``: accuracy on all old facts (absolute);
- ``retention_old``: accuracy on the old facts the model still knew just before the update;
- ``acc_new``: accuracy on the facts of the update (new facts, or counterfacts);
- ``acc_gen``: accuracy on their generalisation prompts (paraphrase + the update's target);
- ``harmonic_mean`` of retention_old, acc_new and acc_gen (0 if any of them is 0).
"""

from __future__ import annotations

import math
from typing import Sequence

import pandas as pd

from workflow_scripts.evaluation import score_targets


def harmonic_mean(values: Sequence[float]) -> float:
    values = [float(v) for v in values]
    if any(math.isnan(v) for v in values):
        return float("nan")
    if any(v <= 0 for v in values):
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


def correct_by_fact(model, tokenizer, prompts, targets, case_ids, batch_size: int = 64) -> pd.Series:
    scores = score_targets(model, tokenizer, list(prompts), list(targets), batch_size)
    return pd.Series(scores.correct.to_numpy(), index=list(case_ids))


def evaluate_update(model, tokenizer, old: pd.DataFrame, new: pd.DataFrame, known_before: set[int],
                    target_column: str = "target_true") -> dict:
    """``old``/``new`` are flat fact tables (see ``facts.schema.flat_facts``); ``new`` is scored with
    ``target_column`` (``target_new`` for counterfacts) on its prompt and on its paraphrase prompt."""
    old_correct = correct_by_fact(model, tokenizer, old.prompt, old.target_true, old.case_id)
    new_correct = correct_by_fact(model, tokenizer, new.prompt, new[target_column], new.case_id)
    gen = new[new.paraphrase_prompt.notna()]
    gen_correct = correct_by_fact(model, tokenizer, gen.paraphrase_prompt, gen[target_column], gen.case_id)
    retained = old_correct[old_correct.index.isin(known_before)]
    row = {
        "acc_old": float(old_correct.mean()),
        "retention_old": float(retained.mean()) if len(retained) else float("nan"),
        "acc_new": float(new_correct.mean()),
        "acc_gen": float(gen_correct.mean()) if len(gen_correct) else float("nan"),
        "n_old": len(old_correct),
        "n_retained_base": len(retained),
        "n_new": len(new_correct),
    }
    row["harmonic_mean"] = harmonic_mean([row["retention_old"], row["acc_new"], row["acc_gen"]])
    return row
