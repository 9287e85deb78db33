"""Summary tables and figures of the familiarity probe."""

from __future__ import annotations

import logging

import pandas as pd

from workflow_scripts.io import atomic_path, write_text
from workflow_scripts.evaluation.stats import wilson
from workflow_scripts.reports.plotting import pyplot, save_figure

log = logging.getLogger(__name__)


def summarise_probe(probe: pd.DataFrame) -> pd.DataFrame:
    """One row per (fact set, target kind): how many facts, how many the model knows, and how sure it is."""
    grouped = probe.groupby(["factset", "target_kind"], sort=False)
    return grouped.agg(
        facts=("case_id", "size"),
        known=("correct", "sum"),
        known_rate=("correct", "mean"),
        mean_first_token_prob=("first_token_prob", "mean"),
        median_first_token_rank=("first_token_rank", "median"),
        mean_logprob=("mean_logprob", "mean"),
    ).reset_index().assign(
        known_lo=lambda t: [wilson(int(k), int(n))[0] for k, n in zip(t.known, t.facts)],
        known_hi=lambda t: [wilson(int(k), int(n))[1] for k, n in zip(t.known, t.facts)],
    )


def known_by_relation(probe: pd.DataFrame) -> pd.DataFrame:
    true = probe[probe.target_kind == "true"]
    return (
        true.groupby(["factset", "relation_id"])
        .agg(facts=("case_id", "size"), known_rate=("correct", "mean"))
        .reset_index()
    )


def plot_known_by_relation(by_relation: pd.DataFrame, dest: str) -> None:
    plt = pyplot()
    wide = by_relation.pivot(index="relation_id", columns="factset", values="known_rate").fillna(0).sort_index()
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(wide)), 4))
    wide.plot.bar(ax=ax, width=0.8)
    ax.set_ylabel("known (teacher-forced exact match)")
    ax.set_xlabel("relation")
    ax.set_ylim(0, 1)
    ax.set_title("Facts the base model already knows, by relation")
    fig.tight_layout()
    save_figure(fig, dest, dpi=120)


def write_probe_report(probe_paths: list[str], csv_path: str, md_path: str, figure_path: str) -> pd.DataFrame:
    probe = pd.concat([pd.read_parquet(p) for p in probe_paths], ignore_index=True)
    summary = summarise_probe(probe)
    with atomic_path(csv_path) as tmp:
        summary.to_csv(tmp, index=False)
    text = ("# Familiarity probe\n\nShare of facts the model knows (teacher-forced exact match), with its 95 % "
            "Wilson interval (known_lo, known_hi); probabilities and ranks are means or medians over the facts.\n\n"
            + summary.to_markdown(index=False, floatfmt=".3f") + "\n")
    write_text(text, md_path)
    plot_known_by_relation(known_by_relation(probe), figure_path)
    log.info("\n%s", summary.to_string(index=False))
    return summary
