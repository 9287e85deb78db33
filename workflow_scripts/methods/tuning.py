"""Learning-rate tuning: each method family's rate, chosen on the validation slice V by one declared rule.

The ``lr_tuning`` scenario (checkpoint A learns V, a slice disjoint from every reported slice) runs
each method at several ``lr_ratio`` values. :func:`rate_table` then picks, per method (a family:
every setting of the method shares its rate):

    among the rates whose update accuracy (pooled over the method's tuning settings and folds) is at
    least ``LEARNED`` (0.9), the one with the highest retention of the old facts (ties: the lower
    rate); if no rate learns that much, the rate with the highest update accuracy (flagged).

With ``updates.tune_lr: true`` every other run of the method trains at
``training.lr * chosen lr_ratio * its own lr_ratio`` (so a grid's ``lr_ratio: 3`` means three times
the tuned rate). Torch-free (pandas only).
"""

from __future__ import annotations

import json
import math

import pandas as pd

LEARNED = 0.9


def rate_table(rows: pd.DataFrame, threshold: float = LEARNED) -> pd.DataFrame:
    """One row per (method, lr_ratio): pooled counts of learned and retained facts, their shares,
    whether the rate learns the update, and which rate the rule chose (``chosen``)."""
    if rows.empty:
        raise ValueError("no learning-rate tuning runs to choose from")
    need = {"method", "lr_ratio", "n_new", "acc_new", "n_old", "retention_old"}
    missing = need - set(rows.columns)
    if missing:
        raise ValueError(f"tuning rows lack columns {sorted(missing)}")
    r = rows.assign(learned=(rows.acc_new * rows.n_new).round(), kept=(rows.retention_old * rows.n_old).round())
    table = (r.groupby(["method", "lr_ratio"], as_index=False)
              .agg(settings=("variant", "nunique"), learned=("learned", "sum"), n_new=("n_new", "sum"),
                   kept=("kept", "sum"), n_old=("n_old", "sum")))
    table["acc_new"] = table.learned / table.n_new
    table["retention_old"] = table.kept / table.n_old.where(table.n_old > 0)
    table["learns"] = table.acc_new >= threshold
    table["chosen"] = False
    table["rule"] = ""
    for method, group in table.groupby("method"):
        learns = group[group.learns]
        if len(learns):
            best = learns.sort_values(["retention_old", "lr_ratio"], ascending=[False, True]).index[0]
            rule = f"highest retention among rates learning >= {threshold:g}"
        else:
            best = group.sort_values(["acc_new", "lr_ratio"], ascending=[False, True]).index[0]
            rule = f"no rate learned >= {threshold:g}: highest update accuracy"
        table.loc[best, "chosen"] = True
        table.loc[group.index, "rule"] = rule
    return table.sort_values(["method", "lr_ratio"]).reset_index(drop=True)


def chosen_rates(table: pd.DataFrame) -> dict[str, float]:
    """method -> the chosen lr_ratio."""
    return {str(r.method): float(r.lr_ratio) for r in table[table.chosen].itertuples()}


def write_rates(table: pd.DataFrame, dest: str) -> None:
    from workflow_scripts.io import atomic_path

    rates = {m: {"lr_ratio": v, "rule": str(table[(table.method == m) & table.chosen].rule.iloc[0])}
             for m, v in chosen_rates(table).items()}
    with atomic_path(dest) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(rates, fh, indent=2, sort_keys=True)


def read_rate(path: str, method: str) -> float:
    """The chosen lr_ratio of ``method`` from a rates file; a clear error when it has none."""
    with open(path, encoding="utf-8") as fh:
        rates = json.load(fh)
    if method not in rates:
        raise ValueError(f"{path} has no tuned learning rate for method {method!r} (tuned: {sorted(rates)}); "
                         f"add it to updates.scenarios.lr_tuning")
    value = float(rates[method]["lr_ratio"])
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{path}: tuned lr_ratio of {method!r} is {value!r}")
    return value
