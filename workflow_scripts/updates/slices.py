"""The fact slices of one fold of the targeted-update experiments (see ``updates.design``)."""

from __future__ import annotations

import logging
import random

import pandas as pd

log = logging.getLogger(__name__)


def known_case_ids(table: pd.DataFrame) -> set[int]:
    """Facts marked correct in a probe table (its target_true rows) or a stage's known table."""
    if "target_kind" in table.columns:
        table = table[table.target_kind == "true"]
    return set(table.case_id[table.correct.astype(bool)])


def update_slices(case_ids: list[int], excluded: set[int], known_by_base: set[int], sizes: dict, seed: int) -> pd.DataFrame:
    """A, B and C (|C| = |B|) drawn uniformly from the facts the pre-trained model does not know and
    that are not ``excluded`` (the history set H); K = up to ``sizes['known_old']`` facts it does know
    (outside H). Returns case_id -> slice ('rest' = unused); seeded by the fold."""
    a, b, k_size = int(sizes["A"]), int(sizes["B"]), int(sizes["known_old"])
    rng = random.Random(f"update-slices|{seed}")
    unknown = sorted(set(case_ids) - excluded - known_by_base)
    need = a + 2 * b
    if need > len(unknown):
        raise ValueError(
            f"slices A={a}, B={b}, C={b} need {need} facts the pre-trained model does not know, outside H; "
            f"only {len(unknown)} are available (lower updates.sizes or use more facts)"
        )
    rng.shuffle(unknown)
    names = {cid: "A" for cid in unknown[:a]}
    names.update({cid: "B" for cid in unknown[a : a + b]})
    names.update({cid: "C" for cid in unknown[a + b : need]})
    known = sorted((known_by_base & set(case_ids)) - excluded)
    rng.shuffle(known)
    if len(known) < k_size:
        log.warning("only %d facts known by the pre-trained model are available for K (asked for %d)", len(known), k_size)
    names.update({cid: "K" for cid in known[:k_size]})
    ids = sorted(case_ids)
    return pd.DataFrame({"case_id": ids, "slice": [names.get(c, "rest") for c in ids]})
