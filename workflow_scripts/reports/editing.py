"""Figures and tables of the editors' experiments: causal tracing / layer choice, sequential editing."""

from __future__ import annotations

import numpy as np
import pandas as pd

from workflow_scripts.io import write_text
from workflow_scripts.reports.plotting import pyplot, save_figure

KIND_ORDER = ("subject_first", "subject_middle", "subject_last", "after_subject", "further", "last")


def trace_matrix(trace: pd.DataFrame, site: str) -> pd.DataFrame:
    """Mean indirect effect, position kind (rows, in sentence order) x layer (columns)."""
    part = trace[trace.site == site]
    table = part.groupby(["kind", "layer"]).effect.mean().unstack("layer")
    return table.reindex([k for k in KIND_ORDER if k in table.index])


def write_layer_report(out: dict, model: str, figure: str, summary: str) -> None:
    trace, sweep, choice = out["trace"], out["sweep"], out["choice"]
    sites = list(dict.fromkeys(trace.site))
    plt = pyplot()
    panels = len(sites) + (1 if len(sweep) else 0)
    fig, axes = plt.subplots(1, panels, figsize=(6.0 * panels, 4.0), squeeze=False)
    for ax, site in zip(axes[0], sites):
        matrix = trace_matrix(trace, site)
        image = ax.imshow(matrix.to_numpy(), aspect="auto", cmap="Purples" if site == "mlp" else "Blues")
        ax.set_yticks(range(len(matrix.index)), [k.replace("_", " ") for k in matrix.index], fontsize=7)
        ticks = list(range(0, matrix.shape[1], max(1, matrix.shape[1] // 10)))
        ax.set_xticks(ticks, [str(matrix.columns[t]) for t in ticks], fontsize=7)
        ax.set_xlabel("layer")
        ax.set_title(f"restoring {'MLP outputs' if site == 'mlp' else 'block outputs (residual stream)'}", fontsize=9)
        fig.colorbar(image, ax=ax, label="indirect effect")
    if len(sweep):
        ax = axes[0][-1]
        stats = sweep.groupby("layer").agg(k=("new_beats_old", "sum"), n=("new_beats_old", "size"),
                                           exact=("exact", "mean"))
        from workflow_scripts.evaluation.stats import wilson

        low, high = zip(*(wilson(int(k), int(n)) for k, n in zip(stats.k, stats.n)))
        share = stats.k / stats.n
        ax.errorbar(stats.index, share, yerr=[share - np.array(low), np.array(high) - share], marker="o",
                    capsize=3, label="new object beats the true one")
        ax.plot(stats.index, stats.exact, marker="s", ls="--", label="new object is the exact answer")
        para = sweep.dropna(subset=["paraphrase_beats_old"]).groupby("layer").paraphrase_beats_old.mean()
        ax.plot(para.index, para.astype(float), marker="^", ls=":", label="… beats it after the paraphrase")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("edited layer (ROME)")
        ax.set_ylabel(f"share of {int(stats.n.iloc[0])} facts")
        ax.legend(fontsize=7)
        ax.set_title("ROME efficacy by layer (95 % Wilson)", fontsize=9)
    fig.suptitle(f"Where facts live: causal tracing of {choice['facts']} known facts ({model}); "
                 "indirect effect = recovered p(true object)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    save_figure(fig, figure)
    lines = [f"# Where facts live ({model})", "",
             f"Causal tracing of {choice['facts']} facts the pre-trained model knows (one per subject): the "
             "subject's token embeddings are corrupted with Gaussian noise and one hidden state at a time is "
             "restored; the indirect effect is the recovered probability of the true object's first token.", ""]
    for site in sites:
        matrix = trace_matrix(trace, site)
        lines += [f"## Restoring {site} outputs: mean indirect effect by position and layer", "",
                  matrix.round(3).to_markdown(), "",
                  f"Peak at the subject's last token: layer {choice[site]['peak']}; suggested window "
                  f"{choice[site]['layers']}.", ""]
    if len(sweep):
        summary_table = sweep.groupby("layer").agg(efficacy=("new_beats_old", "mean"), exact=("exact", "mean"),
                                                   n=("case_id", "size"))
        summary_table["paraphrase"] = sweep.dropna(subset=["paraphrase_beats_old"]).groupby("layer").paraphrase_beats_old.mean()
        lines += ["## ROME efficacy by layer (counterfact targets)", "", summary_table.round(3).to_markdown(), ""]
    lines += [f"**Chosen:** ROME layer {choice['rome_layer']}, MEMIT layers {choice['memit_layers']} "
              "(editing/layer_choice.json; `methods.memit.layers: \"file:results/editing/layer_choice.json\"` "
              "uses them). Tracing peaks predict editing success poorly (Hase et al. 2023), so the sweep "
              "decides where it ran.", ""]
    write_text("\n".join(lines), summary)


SERIES = (("retention_old", "old facts retained", "-"), ("acc_earlier", "earlier edits still known", "--"),
          ("acc_latest", "latest batch learned", ":"))


def write_sequential_report(paths: list[str], model: str, figure: str, summary: str) -> None:
    table = pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True) if paths else pd.DataFrame()
    plt = pyplot()
    fig, axes = plt.subplots(1, len(SERIES), figsize=(13, 3.8), sharey=True)
    if table.empty:
        for ax in axes:
            ax.axis("off")
        axes[1].text(0.5, 0.5, "no sequential editing configured (editing.sequential.methods)", ha="center")
        save_figure(fig, figure)
        write_text("# Sequential editing\n\nNot configured (editing.sequential.methods is empty).\n", summary)
        return
    for ax, (column, label, _) in zip(axes, SERIES):
        for name, part in table.groupby("method"):
            part = part[part[f"{column}_n"] > 0]
            ax.errorbar(part.edits, part[column], yerr=[part[column] - part[f"{column}_lo"], part[f"{column}_hi"] - part[column]],
                        marker="o", capsize=3, label=name)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("facts edited so far")
        ax.set_ylim(-0.02, 1.02)
    axes[0].set_ylabel("exact-match share (95 % Wilson)")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Sequential editing from checkpoint A, one batch after another ({model})", fontsize=10)
    save_figure(fig, figure)
    cols = ["method", "step", "edits", "edit_seconds"]
    shown = table[cols].copy()
    for column, label, _ in SERIES:
        shown[label] = [f"{v:.2f} [{lo:.2f}, {hi:.2f}] n={n}" if n else "–" for v, lo, hi, n in
                        zip(table[column], table[f"{column}_lo"], table[f"{column}_hi"], table[f"{column}_n"])]
    lines = [f"# Sequential editing ({model})", "",
             "From checkpoint A, the stream's new facts are edited in batches, one after another on the same "
             "model; after each batch: the old facts known at A still known, the facts of earlier batches still "
             "known, and the latest batch. Exact match, 95 % Wilson intervals.", "",
             shown.round({"edit_seconds": 1}).to_markdown(index=False), ""]
    write_text("\n".join(lines), summary)
