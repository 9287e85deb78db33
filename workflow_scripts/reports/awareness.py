"""Tables and figures of the dissonance-awareness experiment (all from tidy tables)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from workflow_scripts.awareness.samples import CLASSES
from workflow_scripts.io import atomic_path, write_parquet, write_text
from workflow_scripts.reports.plotting import pyplot, save_figure


def summary_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds for every configuration."""
    keys = ["setting", "probe", "feature_set", "normalisation", "classifier"]
    agg = metrics.groupby(keys).agg(
        accuracy=("accuracy", "mean"), accuracy_std=("accuracy", "std"), macro_f1=("macro_f1", "mean"),
        fam_vs_diss_accuracy=("fam_vs_diss_accuracy", "mean"), seeds=("seed", "nunique"),
    )
    return agg.reset_index().sort_values(keys)


def headline(summary: pd.DataFrame) -> pd.DataFrame:
    """Per setting and probe: the main comparison (gradients+activations, raw) per classifier and the
    best configuration overall."""
    main = summary[(summary.feature_set == "both") & (summary.normalisation == "raw")]
    return main[["setting", "probe", "classifier", "accuracy", "accuracy_std", "macro_f1", "fam_vs_diss_accuracy"]]


def plot_confusion(confusion: pd.DataFrame, summary: pd.DataFrame, dest: str) -> None:
    plt = pyplot()
    settings = list(dict.fromkeys(confusion.setting))
    fig, axes = plt.subplots(1, len(settings), figsize=(4.2 * len(settings), 3.8), squeeze=False)
    for ax, setting in zip(axes[0], settings):
        cand = summary[(summary.setting == setting) & (summary.probe == "prompt")]
        best = cand.loc[cand.accuracy.idxmax()]
        sel = confusion[(confusion.setting == setting) & (confusion.probe == "prompt")
                        & (confusion.feature_set == best.feature_set) & (confusion.normalisation == best.normalisation)
                        & (confusion.classifier == best.classifier)]
        mat = sel.groupby(["true", "predicted"])["count"].sum().unstack().reindex(index=CLASSES, columns=CLASSES).fillna(0)
        rates = mat.to_numpy() / mat.to_numpy().sum(1, keepdims=True)
        ax.imshow(rates, vmin=0, vmax=1, cmap="Blues")
        for i in range(3):
            for j in range(3):
                ax.text(j, i, f"{rates[i, j]:.2f}", ha="center", va="center", color="white" if rates[i, j] > 0.5 else "black")
        ax.set_xticks(range(3), CLASSES)
        ax.set_yticks(range(3), CLASSES)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{setting}: {best.classifier}, {best.feature_set}, {best.normalisation}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, dest)


def plot_feature_sets(metrics: pd.DataFrame, dest: str) -> None:
    plt = pyplot()
    ablation = metrics[~metrics.feature_set.str.contains(":") & metrics.normalisation.isin(["raw", "none"])]
    clf = ablation[ablation.feature_set == "gradients"].classifier.iloc[0]
    ablation = ablation[ablation.classifier == clf]
    order = ["gradients", "activations", "both", "output", "both+output"]
    groups = list(ablation.groupby(["setting", "probe"]))
    fig, ax = plt.subplots(figsize=(8, 3.8))
    width = 0.8 / max(1, len(groups))
    for g, ((setting, probe), part) in enumerate(groups):
        stats = part.groupby("feature_set").accuracy.agg(["mean", "std"]).reindex(order)
        ax.bar(np.arange(len(order)) + g * width, stats["mean"], width, yerr=stats["std"].fillna(0), capsize=3,
               label=f"{setting} / {probe}")
    ax.set_xticks(np.arange(len(order)) + width * (len(groups) - 1) / 2, order)
    ax.axhline(1 / 3, color="grey", ls=":", label="chance")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel(f"test accuracy ({clf})")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    save_figure(fig, dest)


def plot_importance(importance: pd.DataFrame, dest: str) -> None:
    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.8))
    if importance.empty:
        a1.text(0.5, 0.5, "no random-forest run", ha="center")
    else:
        part = importance[importance.probe == "prompt"]
        groups = list(part.groupby(["setting", "modality"]))
        labels = list(dict.fromkeys(part.statistic))
        width = 0.8 / len(groups)
        for g, ((setting, modality), sub) in enumerate(groups):
            per_block = sub.groupby(["seed", "block"]).importance.sum().groupby("block").mean()
            a1.plot(per_block.index, per_block.values, marker="o", ms=3, label=f"{setting} / {modality}")
            by_stat = sub.groupby(["seed", "statistic"]).importance.sum().groupby("statistic").mean().reindex(labels)
            a2.bar(np.arange(len(labels)) + g * width, by_stat.values, width, label=f"{setting} / {modality}")
        a1.set_xlabel("block")
        a1.set_ylabel("summed importance (random forest)")
        a1.legend(fontsize=7)
        a2.set_xticks(np.arange(len(labels)) + width * (len(groups) - 1) / 2, labels)
        a2.set_xlabel("statistic")
        a2.set_ylabel("summed importance")
        a2.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, dest)


def plot_distributions(samples: pd.DataFrame, features: pd.DataFrame, catalog: pd.DataFrame, dest: str) -> None:
    """Per class, the median over probe texts of each block's spread (std statistic, raw), with IQR."""
    plt = pyplot()
    settings = list(dict.fromkeys(samples.setting))
    fig, axes = plt.subplots(2, len(settings), figsize=(5 * len(settings), 6), squeeze=False)
    for col, setting in enumerate(settings):
        s = samples[(samples.setting == setting) & (samples.probe == "prompt")]
        f = features[features.setting == setting].set_index("sample_id").loc[s.sample_id]
        for row, modality in enumerate(("activation", "gradient")):
            cat = catalog[(catalog.family == "internal") & (catalog.normalisation == "raw")
                          & (catalog.modality == modality) & (catalog.statistic == "std")]
            ax = axes[row, col]
            for label in CLASSES:
                vals = f.loc[s.sample_id[s.label == label].to_numpy(), cat.feature.tolist()]
                per_block = vals.T.groupby(cat.block.to_numpy()).mean().T  # (texts, blocks): mean over modules
                q = per_block.quantile([0.25, 0.5, 0.75])
                ax.plot(q.columns, q.loc[0.5], label=label)
                ax.fill_between(q.columns, q.loc[0.25], q.loc[0.75], alpha=0.2)
            ax.set_yscale("log")
            ax.set_title(f"{setting}: {modality} spread (std over units)", fontsize=9)
            ax.set_xlabel("block")
            ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, dest)


def write_awareness_report(settings, inputs: dict, outputs: dict) -> pd.DataFrame:
    def cat(paths, with_setting=False):
        parts = [pd.read_parquet(p) for p in paths]
        if with_setting:
            parts = [p.assign(setting=s) for p, s in zip(parts, settings)]
        return pd.concat(parts, ignore_index=True)

    metrics = cat(inputs["metrics"])
    write_parquet(metrics, outputs["metrics"])
    summary = summary_table(metrics)
    with atomic_path(outputs["csv"]) as tmp:
        summary.to_csv(tmp, index=False)
    text = ["# Dissonance awareness", "",
            "Test accuracy (mean over seeds) of novel / familiar / dissonant classification, split by fact.",
            "`fam_vs_diss_accuracy` is the accuracy on the familiar and dissonant test samples alone (the hard pair).",
            "", "## Gradients + activations (raw), per classifier", "",
            headline(summary).to_markdown(index=False, floatfmt=".3f"), "",
            "## All configurations", "", summary.to_markdown(index=False, floatfmt=".3f"), ""]
    write_text("\n".join(text), outputs["summary"])
    plot_confusion(cat(inputs["confusion"]), summary, outputs["confusion"])
    plot_feature_sets(metrics, outputs["feature_sets"])
    plot_importance(cat(inputs["importance"]), outputs["importance"])
    catalog = pd.read_parquet(inputs["catalog"][0])
    plot_distributions(cat(inputs["samples"], True), cat(inputs["features"], True), catalog, outputs["distributions"])
    return summary
