"""Tables and figures of the targeted-update experiments."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from workflow_scripts.io import atomic_path, write_parquet, write_text
from workflow_scripts.updates.design import experiment

METRICS = ["acc_old", "retention_old", "acc_new", "acc_gen", "harmonic_mean"]
KEY = ["experiment", "setting", "lr_ratio", "epochs", "strategy", "k", "k_fraction"]
REFERENCE_ARMS = ("full", "lora")


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over folds of every metric, per arm."""
    summary = table.groupby(KEY)[METRICS + ["train_seconds"]].agg(["mean", "std"])
    summary.columns = [f"{a}_{b}" for a, b in summary.columns]
    counts = table.groupby(KEY).fold.nunique().rename("folds")
    return summary.join(counts).reset_index()


def main_setting(table: pd.DataFrame) -> str:
    """The experiment's own setting (learning-rate ratio 1, its configured epochs): the most common."""
    base = table[table.lr_ratio == 1.0]
    return (base if len(base) else table).setting.value_counts().index[0]


def _savefig(fig, dest: str) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_vs_k(table: pd.DataFrame, title: str, dest: str) -> None:
    """Old-knowledge accuracy, new-knowledge accuracy and generalisation against k, per strategy
    (error bars: standard deviation over folds), with full fine-tuning, LoRA and the start model."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    targeted = table[~table.strategy.isin(REFERENCE_ARMS)]
    panels = (("acc_old", "old facts known"), ("acc_new", "update facts learned"), ("acc_gen", "generalisation (paraphrase)"))
    for ax, (metric, label) in zip(axes, panels):
        for strategy, part in targeted.groupby("strategy"):
            stats = part.groupby("k")[metric].agg(["mean", "std"])
            ax.errorbar(stats.index, stats["mean"], yerr=stats["std"].fillna(0), marker="o", capsize=3, label=strategy)
        for strategy, style in (("full", "--"), ("lora", ":")):
            part = table[table.strategy == strategy]
            if len(part):
                ax.axhline(part[metric].mean(), ls=style, color="black", label="full fine-tuning" if strategy == "full" else "LoRA")
        if metric == "acc_old":
            start = (table.n_retained_base / table.n_old).mean()
            ax.axhline(start, ls="-.", color="grey", label="before the update")
        if len(targeted):
            ax.set_xscale("log")
        ax.set_xlabel("updated neurons k")
        ax.set_ylabel(label)
        ax.set_ylim(-0.02, 1.02)
    axes[-1].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _savefig(fig, dest)


def plot_pareto(table: pd.DataFrame, title: str, dest: str) -> None:
    """Old-knowledge retention against update accuracy, one panel per k (full and LoRA in each)."""
    plt = _pyplot()
    targeted = table[~table.strategy.isin(REFERENCE_ARMS)]
    ks = sorted(targeted.k.unique()) or [None]
    fig, axes = plt.subplots(1, len(ks), figsize=(4.2 * len(ks), 3.8), squeeze=False)
    markers = dict(zip(sorted(table.strategy.unique()), "os^Dv<>pPX*h"))
    for ax, k in zip(axes[0], ks):
        part = table[table.strategy.isin(REFERENCE_ARMS) | (table.k == k)]
        for strategy, rows in part.groupby("strategy"):
            mean = rows[["acc_new", "retention_old"]].mean()
            ax.scatter(rows.acc_new, rows.retention_old, alpha=0.3, marker=markers[strategy])
            ax.scatter([mean.acc_new], [mean.retention_old], s=70, marker=markers[strategy], label=strategy, edgecolor="black")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("update facts learned")
        ax.set_ylabel("old facts retained")
        ax.set_title(f"k = {int(k):,}" if k is not None else "")
        ax.legend(fontsize=7)
    fig.suptitle(title + " (faint: single folds; upper right is best)", fontsize=10)
    fig.tight_layout()
    _savefig(fig, dest)


def write_update_report(rows: list[str], curves: list[str], experiment_id: str, out: dict) -> pd.DataFrame:
    """Merged tidy table and curves (Parquet), summary (CSV and Markdown), vs-k and Pareto figures."""
    exp = experiment(experiment_id)
    table = pd.concat([pd.read_parquet(p) for p in rows], ignore_index=True)
    write_parquet(table, out["metrics"])
    write_parquet(pd.concat([pd.read_parquet(p) for p in curves], ignore_index=True), out["curves"])
    summary = summarise(table)
    with atomic_path(out["csv"]) as tmp:
        summary.to_csv(tmp, index=False)
    setting = main_setting(table)
    main = table[table.setting == setting]
    start = (main.n_retained_base / main.n_old).mean()
    show = summary.copy()
    for metric in METRICS:
        show[metric] = [_pm(m, s) for m, s in zip(show.pop(f"{metric}_mean"), show.pop(f"{metric}_std"))]
    show["train_s"] = show.pop("train_seconds_mean").round(1)
    show = show.drop(columns=["train_seconds_std", "experiment", "k_fraction"])
    text = [
        f"# Targeted updates: experiment {exp.id}", "",
        f"{exp.title[0].upper() + exp.title[1:]}. Old facts: slice {exp.old}; update: slice {exp.new} "
        f"({'counterfacts, target_new' if exp.target == 'target_new' else 'target_true'}). "
        f"Mean ± standard deviation over {table.fold.nunique()} fold(s).", "",
        f"Old facts known just before the update: {start:.3f} (retention_old counts only those).", "",
        show.to_markdown(index=False, disable_numparse=True), "",
    ]
    write_text("\n".join(text), out["summary"])
    title = f"Experiment {exp.id}: {exp.title} ({setting})"
    plot_vs_k(main, title, out["vs_k"])
    plot_pareto(main, title, out["pareto"])
    return summary


def _pm(mean: float, std: float) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    return f"{mean:.3f}" if std is None or np.isnan(std) else f"{mean:.3f} ± {std:.3f}"
