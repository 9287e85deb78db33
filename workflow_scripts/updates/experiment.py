"""Entry points of the targeted-update stages (rules call these)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from workflow_scripts.facts.schema import flat_facts, read_facts
from workflow_scripts.io import atomic_path, write_parquet, write_text
from workflow_scripts.models.loading import load_model
from workflow_scripts.training.train import TrainConfig
from workflow_scripts.training.usage import load_usage
from workflow_scripts.updates.arms import Arm, run_arm
from workflow_scripts.updates.lora import LoraSettings

log = logging.getLogger(__name__)


def parse_k(text: str) -> int | float | None:
    """Rule wildcard -> k: 'all' (full, LoRA), an integer count, or a fraction such as '0.05'."""
    if text == "all":
        return None
    return float(text) if "." in text else int(text)


def run_update_arm(model_dir: str, facts_path: str, slices_path: str, known_path: str, usage_paths: dict,
                   usage_score: str, strategy: str, k: str, seed: int, training: dict, lora: dict,
                   out_row: str, out_curve: str, experiment: str, fold: int,
                   old_slice: str = "A", new_slice: str = "B") -> dict:
    model, tok = load_model(model_dir, dtype="float32")
    slices = pd.read_parquet(slices_path)
    flat = flat_facts(read_facts(facts_path))
    old = flat[flat.case_id.isin(slices.case_id[slices.slice == old_slice])]
    new = flat[flat.case_id.isin(slices.case_id[slices.slice == new_slice])]
    known = pd.read_parquet(known_path)
    known_before = set(known.case_id[known.correct])
    usage = {name: load_usage(path, usage_score) if path else None for name, path in usage_paths.items()}
    row, curve = run_arm(model, tok, Arm(strategy, parse_k(k), seed), old, new, known_before,
                         TrainConfig(**training), usage, lora=LoraSettings(**lora))
    key = {"experiment": experiment, "stage": f"{old_slice}->{new_slice}", "fold": fold}
    write_parquet(pd.DataFrame([{**key, **row}]), out_row)
    write_parquet(curve.assign(**key, strategy=strategy, k=row["k"]), out_curve)
    log.info("%s %s k=%s: %s", experiment, strategy, k, row)
    return row


def write_update_report(rows: list[str], curves: list[str], initial_known: list[str], out: dict) -> pd.DataFrame:
    """Merged table, readable summary, and old/new accuracy against k per strategy."""
    table = pd.concat([pd.read_parquet(p) for p in rows], ignore_index=True)
    write_parquet(table, out["metrics"])
    write_parquet(pd.concat([pd.read_parquet(p) for p in curves], ignore_index=True), out["curves"])
    cols = ["acc_old", "retention_old", "acc_new", "acc_gen", "harmonic_mean"]
    summary = table.groupby(["experiment", "strategy", "k"])[cols].agg(["mean", "std"])
    summary.columns = [f"{a}_{b}" for a, b in summary.columns]
    summary = summary.reset_index()
    with atomic_path(out["csv"]) as tmp:
        summary.to_csv(tmp, index=False)
    initial = np.mean([pd.read_parquet(p).correct.mean() for p in initial_known])
    text = ["# Targeted updates", "",
            f"Old facts known after the old stage (mean over folds): {initial:.3f}.", "",
            summary.round(3).to_markdown(index=False, disable_numparse=True), ""]
    write_text("\n".join(text), out["summary"])
    plot_old_new_vs_k(table, initial, out["figure"])
    return summary


def plot_old_new_vs_k(table: pd.DataFrame, initial: float, dest: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    targeted = table[~table.strategy.isin(["full", "lora"])]
    for ax, metric, title in ((axes[0], "acc_old", "old facts known"), (axes[1], "acc_new", "new facts learned")):
        for strategy, part in targeted.groupby("strategy"):
            stats = part.groupby("k")[metric].agg(["mean", "std"])
            ax.errorbar(stats.index, stats["mean"], yerr=stats["std"].fillna(0), marker="o", capsize=3, label=strategy)
        for strategy, style in (("full", "--"), ("lora", ":")):
            part = table[table.strategy == strategy]
            if len(part):
                ax.axhline(part[metric].mean(), ls=style, color="black", label=f"{strategy} fine-tuning" if strategy == "full" else "LoRA")
        if metric == "acc_old":
            ax.axhline(initial, ls="-.", color="grey", label="initial (after the old stage)")
        ax.set_xscale("log")
        ax.set_xlabel("updated neurons k")
        ax.set_ylabel(title)
        ax.set_ylim(0, 1.02)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
