"""Knowledge entropy of every update run's result (``entropy.arms``), and how it relates to the runs'
acquisition and retention (the entropy report).

Inside an ``update`` job the resulting model is measured on the fixed entropy texts
(:func:`measure_arm`) and compared, paired over the same texts, with the run's start checkpoint
(whose coefficients rule ``entropy_checkpoint`` saved); the row gets :data:`ARM_COLUMNS`. The report
tabulates the runs, correlates ΔH with acquisition and retention over runs (Pearson r with a Fisher-z
interval, Spearman ρ with a bootstrap interval over runs), and sets resuscitated runs next to full
fine-tuning from the same start with exact McNemar tests on the same facts.
"""

from __future__ import annotations

import math
import time
from statistics import NormalDist
from typing import Sequence

import numpy as np
import pandas as pd

from workflow_scripts.evaluation.stats import mcnemar_exact

ARM_COLUMNS = ("entropy", "entropy_lo", "entropy_hi", "entropy_start", "entropy_delta", "entropy_delta_lo",
               "entropy_delta_hi", "entropy_seconds")
MIN_RUNS = 10  # fewer runs than this: the report says they are too few to establish a relation
RESUSCITATE = "resuscitate"
CONTROL = "full"
OUTCOMES = {"acc_new": "acquisition", "retention_old": "retention"}


# --- inside an update job -----------------------------------------------------------------------


def arm_columns(start, after, n_boot: int, seed: int) -> dict:
    """The row's entropy columns from the start's and the result's per-text coefficients (same texts):
    the result's total with its bootstrap interval, the start's total and the paired difference."""
    from workflow_scripts.entropy.entropy import bootstrap_after_and_delta, total_entropy

    total, delta = bootstrap_after_and_delta(start, after, n_boot=n_boot, seed=seed)
    return {"entropy": total.estimate, "entropy_lo": total.low, "entropy_hi": total.high,
            "entropy_start": total_entropy(start.cbar()), "entropy_delta": delta.estimate,
            "entropy_delta_lo": delta.low, "entropy_delta_hi": delta.high}


def measure_arm(model, tokenizer, texts: Sequence[str], start, *, max_tokens: int, n_boot: int, seed: int) -> dict:
    """Measure ``model`` (in eval mode, restored afterwards) on ``texts`` like its start checkpoint was
    (``paper`` mode, ``max_tokens``) and return :data:`ARM_COLUMNS`, ``entropy_seconds`` included."""
    from workflow_scripts.entropy.coefficients import sequence_coefficients

    began = time.perf_counter()
    training = model.training
    model.eval()
    try:
        after = sequence_coefficients(model, tokenizer, list(texts), mode="paper", max_length=int(max_tokens))
    finally:
        model.train(training)
    columns = arm_columns(start, after, int(n_boot), int(seed))
    return {**columns, "entropy_seconds": time.perf_counter() - began}


# --- correlations over runs ---------------------------------------------------------------------


def _clean(x, y) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in length: {x.shape} and {y.shape}")
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(np.clip(np.corrcoef(x, y)[0, 1], -1.0, 1.0))


def pearson_fisher(x, y, level: float = 0.95) -> dict:
    """Pearson r with its Fisher-z interval tanh(atanh r ± z / sqrt(n − 3)) (NaN below 4 pairs; r = ±1
    gives a zero-width interval). Pairs with a non-finite value are left out."""
    x, y = _clean(x, y)
    n, r = len(x), _pearson(x, y)
    if n < 4 or math.isnan(r):
        return {"n": n, "r": r, "r_lo": float("nan"), "r_hi": float("nan")}
    if abs(r) == 1.0:
        return {"n": n, "r": r, "r_lo": r, "r_hi": r}
    half = NormalDist().inv_cdf(0.5 + level / 2) / math.sqrt(n - 3)
    z = math.atanh(r)
    return {"n": n, "r": r, "r_lo": math.tanh(z - half), "r_hi": math.tanh(z + half)}


def spearman(x, y) -> float:
    """Spearman ρ: Pearson r of the average ranks."""
    x, y = _clean(x, y)
    return _pearson(pd.Series(x).rank().to_numpy(), pd.Series(y).rank().to_numpy())


def spearman_bootstrap(x, y, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Spearman ρ with a percentile interval from resampling the pairs (runs) with replacement, seeded;
    resamples whose ranks are constant (ρ undefined) are dropped and counted in ``rho_boot``."""
    x, y = _clean(x, y)
    n, rho = len(x), spearman(x, y)
    out = {"n": n, "rho": rho, "rho_lo": float("nan"), "rho_hi": float("nan"), "rho_boot": 0}
    if n < 3 or math.isnan(rho):
        return out
    rng = np.random.default_rng(seed)
    draws = [spearman(x[idx], y[idx]) for idx in rng.integers(0, n, size=(n_boot, n))]
    draws = np.array([d for d in draws if not math.isnan(d)])
    if len(draws):
        alpha = (1 - level) / 2
        out.update(rho_lo=float(np.quantile(draws, alpha)), rho_hi=float(np.quantile(draws, 1 - alpha)),
                   rho_boot=len(draws))
    return out


def verdict(stats: dict, min_runs: int = MIN_RUNS) -> str:
    """Plain words for a correlation: too few runs, an interval that includes 0, or both excluding 0."""
    if stats["n"] < min_runs:
        return f"too few runs (n = {stats['n']} < {min_runs}) to establish a relation"
    intervals = [(stats["r_lo"], stats["r_hi"]), (stats["rho_lo"], stats["rho_hi"])]
    if any(math.isnan(lo) or math.isnan(hi) or lo <= 0 <= hi for lo, hi in intervals):
        return "an interval includes 0 (or is undefined): no relation established"
    return "both intervals exclude 0"


def relation(x, y, n_boot: int = 1000, seed: int = 0) -> dict:
    """Pearson r [Fisher-z CI] and Spearman ρ [bootstrap CI] of y on x, with :func:`verdict`."""
    stats = {**pearson_fisher(x, y), **spearman_bootstrap(x, y, n_boot, seed)}
    return {**stats, "verdict": verdict(stats)}


def correlations(rows: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """ΔH against acquisition and retention over runs, with and without the resuscitated runs."""
    out = []
    for subset, part in (("all runs", rows), (f"without {RESUSCITATE}", rows[rows.method != RESUSCITATE])):
        for column, name in OUTCOMES.items():
            out.append({"outcome": name, "column": column, "runs": subset,
                        **relation(part.entropy_delta, part[column], n_boot, seed)})
    return pd.DataFrame(out)


# --- tables -------------------------------------------------------------------------------------

KEY = ["scenario", "method", "variant", "fold"]


def run_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per run: its entropy and paired ΔH with intervals, acquisition and retention with their
    counts and Wilson intervals (as the evaluator wrote them)."""
    columns = [*KEY, *ARM_COLUMNS]
    for column in OUTCOMES:
        columns += [column, f"{column}_n", f"{column}_lo", f"{column}_hi"]
    missing = sorted(set(columns) - set(rows.columns))
    if missing:
        raise ValueError(f"the run rows lack {missing} (were they written with entropy.arms on?)")
    return rows[columns].reset_index(drop=True)


def _outcomes(items: pd.DataFrame, key: tuple, metric: str) -> pd.Series:
    """One run's per-item outcomes of ``metric``, indexed by (case_id, item)."""
    mask = np.logical_and.reduce([items[c] == v for c, v in zip(KEY, key)]) & (items.metric == metric)
    return items[mask].set_index(["case_id", "item"]).correct.astype(bool)


def mcnemar_vs(items: pd.DataFrame, key: tuple, control: tuple, metric: str) -> float:
    """Exact McNemar p of a run against a control run on the items both scored (NaN when none)."""
    a, b = _outcomes(items, key, metric), _outcomes(items, control, metric)
    both = a.index.intersection(b.index)
    return mcnemar_exact(a[both].tolist(), b[both].tolist())["p_value"] if len(both) else float("nan")


def control_of(rows: pd.DataFrame, run: pd.Series) -> pd.Series | None:
    """The full fine-tune from the same start (scenario, fold) with the same recipe (epochs, learning
    rate, batch size); the ``default`` variant first when several match; None when none does."""
    same = rows[(rows.method == CONTROL) & (rows.scenario == run.scenario) & (rows.fold == run.fold)]
    for column in ("epochs", "lr", "batch_size"):
        if column in rows.columns:
            same = same[same[column] == run[column]]
    if same.empty:
        return None
    return same.sort_values("variant", key=lambda v: v != "default").iloc[0]


def resuscitation_table(rows: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """Every resuscitated run after its full fine-tuning control: acquisition, retention (Wilson), the
    exact McNemar p against the control on the same facts, ΔH, neurons resuscitated and clamped."""
    out = []
    for _, run in rows[rows.method == RESUSCITATE].iterrows():
        control = control_of(rows, run)
        for r, is_control in ([(control, True)] if control is not None else []) + [(run, False)]:
            entry = {c: r[c] for c in KEY}
            entry.update({"control": is_control, "arm": r.get("arm"),
                          "resuscitated": r.get("resuscitated", np.nan), "clamped": r.get("clamped", np.nan)})
            for column in OUTCOMES:
                entry.update({c: r[c] for c in (column, f"{column}_n", f"{column}_lo", f"{column}_hi")})
                entry[f"{column}_p_vs_full"] = (np.nan if is_control or control is None else
                                                mcnemar_vs(items, tuple(run[KEY]), tuple(control[KEY]), column))
            entry.update({c: r[c] for c in ("entropy_delta", "entropy_delta_lo", "entropy_delta_hi")})
            out.append(entry)
    table = pd.DataFrame(out)
    return table.drop_duplicates(subset=KEY, keep="first").reset_index(drop=True) if len(table) else table
