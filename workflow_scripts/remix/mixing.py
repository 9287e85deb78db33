"""REMIX's data mixing: append ``int(ratio * N)`` mixing rows to the N fact rows of a stage.

As in the REMIX seed (``get_add_mixing_datapoints``) the mixing rows are simply appended; the
training routine's seeded random batches spread them among the facts. Unlike the seed, too few
mixing rows is an error, never a silent truncation.

The mixed table has the fact rows first (their columns and values as given), then the chosen
mixing rows, a fresh 0..N+k-1 index, and an ``is_fact`` column (True on fact rows). A column both
sides have keeps the fact rows' dtype where the mixing rows' values convert to it. Columns that only
one side has are missing (NaN/None) on the other side's rows (so pandas may widen a facts-only
integer column to float; pass only the columns training needs to avoid that), except ``kind``, which
fact rows without one get as ``"fact"``. A ratio of 0 changes nothing: the fact rows come back as given (a copy,
without ``is_fact``; :func:`fact_mask` reads either form).
"""

from __future__ import annotations

import math
import random

import numpy as np
import pandas as pd

FACT_COLUMN = "is_fact"
REQUIRED = ("prompt", "target")


def mixing_count(n_facts: int, ratio: float) -> int:
    """How many mixing rows go with ``n_facts`` fact rows: ``int(ratio * n_facts)``, the seed's rule."""
    if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not math.isfinite(ratio) or ratio < 0:
        raise ValueError(f"the mixing ratio must be a finite number >= 0, got {ratio!r}")
    return int(ratio * n_facts)


def mix(fact_rows: pd.DataFrame, mixing_rows: pd.DataFrame, ratio: float, seed: int | str = 0) -> pd.DataFrame:
    """The fact rows followed by exactly ``int(ratio * len(fact_rows))`` rows of ``mixing_rows``,
    chosen by a seeded sample without replacement (in sampled order), with an ``is_fact`` column.

    Both tables need ``prompt`` and ``target`` columns. Raises ValueError when ``mixing_rows`` has
    fewer rows than needed or when either table already has an ``is_fact`` column. With ratio 0
    the result is a copy of ``fact_rows``, unchanged.
    """
    k = mixing_count(len(fact_rows), ratio)
    if k == 0:
        return fact_rows.copy()
    for name, table in (("fact rows", fact_rows), ("mixing rows", mixing_rows)):
        missing = [c for c in REQUIRED if c not in table.columns]
        if missing:
            raise ValueError(f"the {name} lack the column(s) {missing}")
        if FACT_COLUMN in table.columns:
            raise ValueError(f"the {name} already have an {FACT_COLUMN!r} column")
    if len(mixing_rows) < k:
        raise ValueError(f"ratio {ratio} needs {k} mixing rows for {len(fact_rows)} fact rows, but only "
                         f"{len(mixing_rows)} were given")
    rng = random.Random(f"mix|{seed}")
    chosen = mixing_rows.iloc[rng.sample(range(len(mixing_rows)), k)]
    facts = fact_rows.copy()
    if "kind" not in facts.columns and "kind" in chosen.columns:
        facts["kind"] = "fact"
    facts[FACT_COLUMN] = True
    chosen = chosen.copy()
    chosen[FACT_COLUMN] = False
    for column in chosen.columns.intersection(facts.columns):
        if chosen[column].dtype != facts[column].dtype:  # e.g. object vs string: keep the facts' dtype
            try:
                chosen[column] = chosen[column].astype(facts[column].dtype)
            except (TypeError, ValueError):
                pass  # pandas finds a common dtype when concatenating
    columns = list(facts.columns) + [c for c in chosen.columns if c not in facts.columns]
    return pd.concat([facts, chosen], ignore_index=True)[columns]


def fact_mask(rows: pd.DataFrame) -> np.ndarray:
    """Which rows are facts: the ``is_fact`` column of a mixed table, all True for unmixed rows."""
    if FACT_COLUMN in rows.columns:
        return rows[FACT_COLUMN].to_numpy(dtype=bool)
    return np.ones(len(rows), dtype=bool)


__all__ = ["FACT_COLUMN", "fact_mask", "mix", "mixing_count"]
