"""Tables and figures of one scenario's runs: a summary with counts and intervals, accuracy against k
per neuron strategy (other methods as reference lines), and the old-vs-new Pareto view."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from workflow_scripts.evaluation.stats import wilson
from workflow_scripts.io import atomic_path, write_parquet, write_text
from workflow_scripts.reports.plotting import pyplot, save_figure
from workflow_scripts.scenarios.design import scenario

METRICS = ["acc_old", "retention_old", "acc_new", "acc_gen", "harmonic_mean"]
COUNTED = ["acc_old", "retention_old", "acc_new", "acc_gen"]
KEY = ["scenario", "method", "variant", "arm", "lr_ratio", "epochs", "k", "k_fraction"]


def pooled(table: pd.DataFrame, metric: str) -> tuple[int, int]:
    """(successes, count) of an accuracy pooled over the rows (folds) of one setting."""
    n = table[f"{metric}_n"].fillna(0).astype(int)
    k = (table[metric].fillna(0) * n).round().astype(int)
    return int(k.sum()), int(n.sum())


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Per setting: each accuracy pooled over folds with its count and 95 % Wilson interval, the
    mean and standard deviation over folds of every metric, and the folds."""
    rows = []
    for key, part in table.groupby(KEY, dropna=False, sort=True):
        row = dict(zip(KEY, key))
        for metric in COUNTED:
            k, n = pooled(part, metric)
            low, high = wilson(k, n)
            row.update({f"{metric}_pooled": k / n if n else np.nan, f"{metric}_n": n,
                        f"{metric}_lo": low, f"{metric}_hi": high})
        for metric in METRICS + ["train_seconds"]:
            row[f"{metric}_mean"] = part[metric].mean()
            row[f"{metric}_std"] = part[metric].std()
        row["folds"] = part.fold.nunique()
        rows.append(row)
    return pd.DataFrame(rows)


def own_lr_ratio(table: pd.DataFrame) -> pd.Series:
    """A run's learning-rate ratio relative to its family's tuned rate (``updates.tune_lr``), else
    relative to training.lr."""
    tuned = table["lr_tuned_ratio"] if "lr_tuned_ratio" in table else pd.Series(np.nan, index=table.index)
    return (table.lr_ratio / tuned.where(tuned.notna(), 1.0)).round(6)


def main_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The scenario's own setting: learning-rate ratio 1 (relative to the tuned rate when rates are
    tuned) and its most common number of epochs (sweeps over either are left to the overview)."""
    base = table[own_lr_ratio(table) == 1.0]
    base = base if len(base) else table
    trained = base.method.map(trains_in_epochs)  # editors have neither epochs nor a learning rate
    if not trained.any():
        return base
    return base[~trained | (base.epochs == base.epochs[trained].mode().iloc[0])]


def trains_in_epochs(name: str) -> bool:
    from workflow_scripts.methods.base import method
    from workflow_scripts.scenarios.runs import params_fields

    return "epochs" in params_fields(method(name))


def with_interval(k: int, n: int) -> str:
    if n == 0:
        return "–"
    low, high = wilson(k, n)
    return f"{k / n:.3f} [{low:.2f}, {high:.2f}] n={n}"


def plot_vs_k(table: pd.DataFrame, title: str, dest: str) -> None:
    """Old-knowledge accuracy, new-knowledge accuracy and generalisation against k, per strategy
    (error bars: standard deviation over folds), with full fine-tuning, LoRA and the start model."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    targeted = table[table.strategy.notna()]
    references = table[table.strategy.isna()]
    panels = (("acc_old", "old facts known"), ("acc_new", "update facts learned"), ("acc_gen", "generalisation (paraphrase)"))
    for ax, (metric, label) in zip(axes, panels):
        for strategy, part in targeted.groupby("strategy"):
            stats = part.groupby("k")[metric].agg(["mean", "std"])
            ax.errorbar(stats.index, stats["mean"], yerr=stats["std"].fillna(0), marker="o", capsize=3, label=strategy)
        for (arm, part), style in zip(references.groupby("arm"), ("--", ":", "-.", (0, (1, 3)))):
            ax.axhline(part[metric].mean(), ls=style, color="black", label=arm)
        if metric == "acc_old":
            start = (table.n_retained_base / table.n_old).mean()
            ax.axhline(start, ls="-", color="grey", alpha=0.6, label="before the update")
        if len(targeted):
            ax.set_xscale("log")
        ax.set_xlabel("updated neurons k")
        ax.set_ylabel(label)
        ax.set_ylim(-0.02, 1.02)
    axes[-1].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, dest)


def plot_pareto(table: pd.DataFrame, title: str, dest: str) -> None:
    """Old-knowledge retention against update accuracy, one panel per k (full and LoRA in each)."""
    plt = pyplot()
    targeted = table[table.strategy.notna()]
    ks = sorted(targeted.k.unique()) or [None]
    fig, axes = plt.subplots(1, len(ks), figsize=(4.2 * len(ks), 3.8), squeeze=False)
    markers = dict(zip(sorted(table.arm.unique()), "os^Dv<>pPX*h"))
    for ax, k in zip(axes[0], ks):
        part = table[table.strategy.isna() | (table.k == k)]
        for arm, rows in part.groupby("arm"):
            mean = rows[["acc_new", "retention_old"]].mean()
            ax.scatter(rows.acc_new, rows.retention_old, alpha=0.3, marker=markers[arm])
            ax.scatter([mean.acc_new], [mean.retention_old], s=70, marker=markers[arm], label=arm, edgecolor="black")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("update facts learned")
        ax.set_ylabel("old facts retained")
        ax.set_title(f"k = {int(k):,}" if k is not None else "")
        ax.legend(fontsize=7)
    fig.suptitle(title + " (faint: single folds; upper right is best)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, dest)


def write_scenario_report(rows: list[str], curves: list[str], scenario_name: str, out: dict,
                          model: str = "") -> pd.DataFrame:
    """Merged tidy table and curves (Parquet), summary (CSV and Markdown), vs-k and Pareto figures."""
    sc = scenario(scenario_name)
    table = pd.concat([pd.read_parquet(p) for p in rows], ignore_index=True)
    write_parquet(table, out["metrics"])
    write_parquet(pd.concat([pd.read_parquet(p) for p in curves], ignore_index=True), out["curves"])
    summary = summarise(table)
    with atomic_path(out["csv"]) as tmp:
        summary.to_csv(tmp, index=False)
    main = main_rows(table)
    start = with_interval(int(main.n_retained_base.sum()), int(main.n_old.sum()))
    show = summary[["arm", "variant", "k"]].copy()
    show["k"] = [f"{int(k):,}" for k in show.k]
    for metric in COUNTED:
        show[metric] = [with_interval(int(round(p * n)) if n else 0, int(n))
                        for p, n in zip(summary[f"{metric}_pooled"].fillna(0), summary[f"{metric}_n"])]
    show["harmonic_mean"] = [_pm(m, s) for m, s in zip(summary.harmonic_mean_mean, summary.harmonic_mean_std)]
    show["train_s"] = summary.train_seconds_mean.round(1)
    text = [
        f"# Scenario {sc.name} (paper section {sc.paper})", "",
        *([f"Model: {model}.", ""] if model else []),
        f"{sc.title[0].upper() + sc.title[1:]}. Keeps slice {sc.keep}; learns slice {sc.learn} "
        f"({'counterfacts, target_new' if sc.target == 'target_new' else 'target_true'}). "
        f"Accuracies pooled over {table.fold.nunique()} fold(s): share [95 % Wilson interval] n = facts; "
        "harmonic mean: mean ± standard deviation over folds.", "",
        f"Old facts known just before the update: {start} (retention_old counts only those).", "",
        show.to_markdown(index=False, disable_numparse=True), "",
    ]
    write_text("\n".join(text), out["summary"])
    title = f"{sc.name} ({sc.paper}): {sc.title}"
    plot_vs_k(main, title, out["vs_k"])
    plot_pareto(main, title, out["pareto"])
    return summary


def _pm(mean: float, std: float) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    return f"{mean:.3f}" if std is None or np.isnan(std) else f"{mean:.3f} ± {std:.3f}"
