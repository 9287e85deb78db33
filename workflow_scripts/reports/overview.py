"""Across scenarios: a dissonant update vs its matched non-dissonant control, where the stubborn
neurons sit, how usage is distributed, and the learning-rate and epoch sweeps."""

from __future__ import annotations

import numpy as np
import pandas as pd

from workflow_scripts.io import write_text
from workflow_scripts.methods.neurons import StrategyInputs, neuron_mask, resolve_k
from workflow_scripts.reports.plotting import pyplot, save_figure
from workflow_scripts.reports.updates import main_rows, pooled, with_interval
from workflow_scripts.scenarios.design import SCENARIOS, controlled_pairs

LEARNED = 0.9  # "learned" = at least this accuracy on the update facts


def arm_label(arm: str, k: int, total: int, targeted: bool = True) -> str:
    """A method's name, or a neuron strategy with its k."""
    return f"{arm} k={k:,} ({100 * k / total:.3g}%)" if targeted else arm


def labels(table: pd.DataFrame, total: int) -> list[str]:
    return [arm_label(a, int(k), total, s is not None and s == s) for a, k, s in zip(table.arm, table.k, table.strategy)]


def pair() -> tuple[str, str] | None:
    """The (dissonant scenario, its matched control) the overview compares."""
    pairs = controlled_pairs()
    return pairs[0] if pairs else None


def kind(scenario_name: str) -> str:
    p = pair()
    return "dissonant" if p and scenario_name == p[0] else "matched"


def epochs_to_learn(curves: pd.DataFrame, threshold: float = LEARNED) -> pd.DataFrame:
    """Per scenario, setting, arm and fold: the first epoch whose update accuracy reaches ``threshold``
    (NaN if none did) and the old-knowledge retention at that epoch."""
    rows = []
    for key, part in curves.groupby(["scenario", "variant", "arm", "k", "fold"]):
        part = part.sort_values("epoch")
        hit = part[part.acc_new >= threshold]
        first = hit.iloc[0] if len(hit) else None
        rows.append(dict(zip(["scenario", "variant", "arm", "k", "fold"], key),
                         epochs_to_learn=float(first.epoch) if first is not None else np.nan,
                         retention_when_learned=float(first.retention_old) if first is not None else np.nan,
                         epochs_run=int(part.epoch.max())))
    return pd.DataFrame(rows)


def dissonance_table(metrics: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """The dissonant scenario and its matched control side by side at their own setting: mean over
    folds per arm."""
    p = pair()
    both = metrics[metrics.scenario.isin(p)] if p else metrics.iloc[:0]
    if both.scenario.nunique() < 2:
        return pd.DataFrame()
    both = main_rows(both)
    variants = set(both.variant)
    mean = both.groupby(["arm", "k", "scenario"], dropna=False)[["retention_old", "acc_new", "acc_gen"]].mean()
    wide = mean.unstack("scenario")
    wide.columns = [f"{m}_{kind(e)}" for m, e in wide.columns]
    epochs = epochs_to_learn(curves[curves.scenario.isin(p) & curves.variant.isin(variants)])
    if len(epochs):
        e = epochs.groupby(["arm", "k", "scenario"]).epochs_to_learn.mean().unstack("scenario")
        e.columns = [f"epochs_to_learn_{kind(c)}" for c in e.columns]
        wide = wide.join(e)
    strategy = both.drop_duplicates(["arm", "k"]).set_index(["arm", "k"]).strategy
    return wide.join(strategy).reset_index()


def plot_dissonance(metrics: pd.DataFrame, curves: pd.DataFrame, total: int, dest: str) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    table = dissonance_table(metrics, curves)
    p = pair()
    if table.empty:
        for ax in axes:
            ax.axis("off")
        axes[1].text(0.5, 0.5, "needs a dissonant scenario and its matched control", ha="center")
        save_figure(fig, dest)
        return
    names = labels(table, total)
    x = np.arange(len(table))
    axes[0].bar(x - 0.2, table.retention_old_matched, 0.4, label=f"{p[1]} ({SCENARIOS[p[1]].paper})", color="tab:blue")
    axes[0].bar(x + 0.2, table.retention_old_dissonant, 0.4, label=f"{p[0]} ({SCENARIOS[p[0]].paper})", color="tab:red")
    axes[0].set_xticks(x, names, rotation=25, ha="right", fontsize=7)
    axes[0].set_ylabel("old facts retained (known before the update)")
    axes[0].set_ylim(0, 1.02)
    axes[0].legend(fontsize=7)
    variants = set(main_rows(metrics[metrics.scenario.isin(p)]).variant)
    part = curves[curves.scenario.isin(p) & curves.variant.isin(variants)]
    colors = dict(zip(table.arm.unique(), plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    targeted = dict(zip(table.arm, table.strategy.notna()))
    for (sc, arm, k), rows in part.groupby(["scenario", "arm", "k"]):
        mean = rows.groupby("epoch")[["acc_new", "retention_old"]].mean()
        style = "-" if kind(sc) == "dissonant" else "--"
        name = f"{arm_label(arm, int(k), total, targeted.get(arm, False))}, {kind(sc)}"
        axes[1].plot(mean.index, mean.acc_new, style, marker=".", color=colors.get(arm), label=name)
        kept = mean.retention_old.dropna()  # retention is measured every few epochs (updates.curve_every)
        axes[2].plot(kept.index, kept, style, marker=".", color=colors.get(arm), label=name)
    axes[1].set_ylabel("update facts learned")
    axes[2].set_ylabel("old facts retained")
    for ax in axes[1:]:
        ax.set_xlabel("epoch")
        ax.set_ylim(-0.02, 1.02)
    axes[2].legend(fontsize=6)
    fig.suptitle("Dissonant updates (red bars, solid lines) vs matched non-dissonant ones "
                 "(blue bars, dashed lines)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, dest)


def stubborn_location(usage_per_fold: list[dict], modules: pd.DataFrame, ks: list[float]) -> pd.DataFrame:
    """Share of the top-k old-usage (stubborn) neurons in each block and module type, mean over folds,
    with the share a uniform choice would give."""
    widths = dict(zip(modules.name, modules.width))
    total = int(modules.width.sum())
    rows = []
    for k_value in ks:
        k = resolve_k(k_value, total)
        for fold, usage in enumerate(usage_per_fold):
            mask = neuron_mask("stubborn", StrategyInputs(widths, old=usage), k)
            for name, chosen in mask.items():
                rows.append({"k": k, "fold": fold, "name": name, "chosen": int(chosen.sum())})
    counts = pd.DataFrame(rows).merge(modules, on="name")
    out = []
    for by in ("block", "type"):
        grouped = counts.groupby(["k", "fold", by]).agg(chosen=("chosen", "sum"), width=("width", "sum")).reset_index()
        grouped["share"] = grouped.chosen / grouped.k
        grouped["uniform_share"] = grouped.width / total
        mean = grouped.groupby(["k", by])[["share", "uniform_share"]].mean().reset_index()
        out.append(mean.rename(columns={by: "group"}).assign(by=by, group=lambda d: d.group.astype(str)))
    return pd.concat(out, ignore_index=True)


def plot_stubborn_location(location: pd.DataFrame, dest: str) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 3.8), gridspec_kw={"width_ratios": [2, 1]})
    blocks = location[location.by == "block"].assign(group=lambda d: d.group.astype(int))
    for k, part in blocks.groupby("k"):
        part = part.sort_values("group")
        axes[0].plot(part.group, part.share, marker=".", label=f"k = {k:,}")
    uniform = blocks.drop_duplicates("group").sort_values("group")
    axes[0].plot(uniform.group, uniform.uniform_share, ls=":", color="grey", label="uniform")
    axes[0].set_xlabel("block")
    axes[0].set_ylabel("share of stubborn neurons")
    axes[0].legend(fontsize=7)
    types = location[location.by == "type"]
    names = sorted(types.group.unique())
    ks = sorted(types.k.unique())
    width = 0.8 / (len(ks) + 1)
    x = np.arange(len(names))
    for i, k in enumerate(ks):
        part = types[types.k == k].set_index("group").reindex(names)
        axes[1].bar(x + i * width, part.share, width, label=f"k = {k:,}")
    uniform = types.drop_duplicates("group").set_index("group").reindex(names)
    axes[1].bar(x + len(ks) * width, uniform.uniform_share, width, color="lightgrey", label="uniform")
    axes[1].set_xticks(x + width * len(ks) / 2, names, rotation=30, ha="right", fontsize=8)
    axes[1].set_ylabel("share of stubborn neurons")
    axes[1].legend(fontsize=7)
    fig.suptitle("Where the stubborn neurons (top-k usage while learning the old facts A) sit", fontsize=10)
    fig.tight_layout()
    save_figure(fig, dest)


def usage_frame(usages: dict[str, dict], modules: pd.DataFrame) -> pd.DataFrame:
    """Long table of per-neuron usage: source, module type, block, score."""
    kinds = dict(zip(modules.name, zip(modules.type, modules.block)))
    parts = []
    for source, usage in usages.items():
        for name, scores in usage.items():
            mtype, block = kinds.get(name, ("?", -1))
            parts.append(pd.DataFrame({"source": source, "type": mtype, "block": block, "score": scores.float().numpy()}))
    return pd.concat(parts, ignore_index=True)


def plot_usage_distribution(frame: pd.DataFrame, score_name: str, dest: str) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    positive = frame[frame.score > 0]
    low, high = np.log10(positive.score.min()), np.log10(positive.score.max())
    bins = np.linspace(low, high, 60)
    for source, part in positive.groupby("source"):
        axes[0].hist(np.log10(part.score), bins=bins, histtype="step", density=True, label=source)
    axes[0].set_xlabel(f"log10 usage ({score_name})")
    axes[0].set_ylabel("density of neurons")
    axes[0].legend(fontsize=7)
    first = positive[positive.source == positive.source.iloc[0]]
    names = sorted(first.type.unique())
    axes[1].boxplot([np.log10(first[first.type == t].score) for t in names], showfliers=False)
    axes[1].set_xticks(range(1, len(names) + 1), names, rotation=30, ha="right", fontsize=8)
    axes[1].set_ylabel(f"log10 usage, {positive.source.iloc[0]}")
    zero = (frame.score == 0).groupby(frame.source).mean()
    fig.suptitle("Distribution of per-neuron usage; share exactly zero: "
                 + ", ".join(f"{s} {100 * z:.1f}%" for s, z in zero.items()), fontsize=10)
    fig.tight_layout()
    save_figure(fig, dest)


def plot_sweeps(metrics: pd.DataFrame, total: int, dest: str) -> bool:
    """Learning-rate ratio sweeps (any scenario) and epoch sweeps (the dissonant scenario and its
    control); False if nothing was swept."""
    plt = pyplot()
    metrics = metrics.assign(targeted=metrics.strategy.notna())
    lr = metrics[metrics.groupby(["scenario", "arm", "k"]).lr_ratio.transform("nunique") > 1]
    p = pair()
    ep = metrics[metrics.scenario.isin(p or ())]
    ep = ep[ep.groupby(["scenario", "arm", "k"]).epochs.transform("nunique") > 1]
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    for (sc, arm, k, targeted), part in lr.groupby(["scenario", "arm", "k", "targeted"]):
        mean = part.groupby("lr_ratio")[["acc_old", "acc_new"]].mean()
        line = axes[0].plot(mean.index, mean.acc_old, marker="o", label=f"{sc}, {arm_label(arm, int(k), total, targeted)}: old")
        axes[0].plot(mean.index, mean.acc_new, marker="s", ls="--", color=line[0].get_color(), label="  new")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("update learning rate / old-stage learning rate")
    axes[0].set_ylabel("accuracy")
    for (sc, arm, k, targeted), part in ep.groupby(["scenario", "arm", "k", "targeted"]):
        mean = part.groupby("epochs")[["retention_old", "acc_new"]].mean()
        line = axes[1].plot(mean.index, mean.acc_new, marker="s", ls="--", label=f"{arm_label(arm, int(k), total, targeted)}, {kind(sc)}: new")
        axes[1].plot(mean.index, mean.retention_old, marker="o", color=line[0].get_color(), label="  old retained")
    axes[1].set_xlabel("epochs of the update (dissonant vs matched)")
    for ax, empty in ((axes[0], lr.empty), (axes[1], ep.empty)):
        ax.set_ylim(-0.02, 1.02)
        if empty:
            ax.text(0.5, 0.5, "not swept (lr_ratio or epochs lists in updates.scenarios)", ha="center", transform=ax.transAxes)
        else:
            ax.legend(fontsize=6)
    fig.suptitle("The original's addenda: learning-rate ratio and epochs", fontsize=10)
    fig.tight_layout()
    save_figure(fig, dest)
    return not (lr.empty and ep.empty)


def position_overlap(usage_paths: list[str], score: str, ks: list[float]) -> pd.DataFrame:
    """How much the stubborn (top-k) and plastic (bottom-k) sets of old usage agree when usage sums
    over every real position (``all_real``) or only over answer positions (``answer``): per fold and
    k, the Jaccard index of the two definitions' sets and the share of one set found in the other."""
    from workflow_scripts.training.usage import load_usage

    rows = []
    for fold, path in enumerate(usage_paths):
        both = {kind: load_usage(path, score, kind) for kind in ("all_real", "answer")}
        widths = {name: len(t) for name, t in both["all_real"].items()}
        total = sum(widths.values())
        for k in sorted({float(k) for k in ks if float(k) < 1}):
            count = resolve_k(k, total)
            for strategy in ("stubborn", "plastic"):
                sets = {}
                for kind, usage in both.items():
                    mask = neuron_mask(strategy, StrategyInputs(widths, old=usage), count)
                    sets[kind] = {(name, int(i)) for name, m in mask.items() for i in m.nonzero().flatten()}
                shared = len(sets["all_real"] & sets["answer"])
                rows.append({"fold": fold, "k": k, "strategy": strategy, "neurons": count,
                             "jaccard": shared / len(sets["all_real"] | sets["answer"]), "shared": shared / count})
    return pd.DataFrame(rows)


def _pooled_cell(part: pd.DataFrame, metric: str) -> str:
    return with_interval(*pooled(part, metric))


def run_intervals(metrics: pd.DataFrame) -> pd.DataFrame:
    """Every setting: retention, acquisition and generalisation pooled over folds, with intervals."""
    rows = []
    for (scenario, method, variant), part in metrics.groupby(["scenario", "method", "variant"], sort=True):
        rows.append({"scenario": scenario, "method": method, "variant": variant, "folds": part.fold.nunique(),
                     **{m: _pooled_cell(part, m) for m in ("retention_old", "acc_new", "acc_gen")},
                     "harmonic_mean": round(float(part.harmonic_mean.mean()), 3)})
    return pd.DataFrame(rows)


def dissonance_intervals(metrics: pd.DataFrame, table: pd.DataFrame, total: int) -> pd.DataFrame:
    """The dissonant scenario and its control per arm (the rows of :func:`dissonance_table`), pooled
    over folds with intervals, and the epochs to learn."""
    p = pair()
    both = main_rows(metrics[metrics.scenario.isin(p)])
    rows = []
    for name, (_, r) in zip(labels(table, total), table.iterrows()):
        arm = both[(both.arm == r.arm) & ((both.k == r.k) | (both.k.isna() & pd.isna(r.k)))]
        entry = {"arm": name}
        for metric in ("retention_old", "acc_new", "acc_gen"):
            for scenario in p:
                entry[f"{metric}_{kind(scenario)}"] = _pooled_cell(arm[arm.scenario == scenario], metric)
        for column in [c for c in table.columns if c.startswith("epochs_to_learn")]:
            entry[column] = "–" if pd.isna(r[column]) else f"{r[column]:.1f}"
        rows.append(entry)
    return pd.DataFrame(rows)


def write_overview(metrics_paths: list[str], curves_paths: list[str], usage_paths: dict[str, list[str]],
                   modules_path: str, usage_score: str, ks: list[float], out: dict, model: str = "") -> str:
    """``usage_paths``: source ('A', 'B', 'H') -> usage files (one per fold; H has one);
    ``modules_path``: the module table written at conversion (name, block, type, width)."""
    from workflow_scripts.training.usage import load_usage

    metrics = pd.concat([pd.read_parquet(p) for p in metrics_paths], ignore_index=True)
    curves = pd.concat([pd.read_parquet(p) for p in curves_paths], ignore_index=True)
    modules = pd.read_parquet(modules_path)
    total = int(modules.width.sum())
    usage_a = [load_usage(p, usage_score) for p in usage_paths["A"]]
    location = stubborn_location(usage_a, modules, ks)
    plot_stubborn_location(location, out["location"])
    frame = usage_frame({f"{s} (fold 0)" if s != "H" else "H": load_usage(paths[0], usage_score)
                         for s, paths in usage_paths.items()}, modules)
    plot_usage_distribution(frame, usage_score, out["usage"])
    plot_dissonance(metrics, curves, total, out["dissonance"])
    swept = plot_sweeps(metrics, total, out["sweeps"])

    lines = ["# Targeted updates: overview", "", *([f"Model: {model}.", ""] if model else []),
             f"{total:,} tracked neurons ({len(modules)} linear modules). Usage score: {usage_score}.", ""]
    table = dissonance_table(metrics, curves)
    if len(table):
        p = pair()
        lines += [f"## Dissonant vs matched non-dissonant update ({p[0]} vs {p[1]})", "",
                  "Old facts (A) retained, update accuracy and generalisation: share [95 % Wilson interval] "
                  f"(items), pooled over folds; epochs to learn = mean first epoch with update accuracy >= {LEARNED} "
                  "(from the per-epoch curves). Paired tests: report/leaderboard.md.", "",
                  dissonance_intervals(metrics, table, total).to_markdown(index=False), ""]
    lines += ["## Every run (pooled over folds)", "",
              "Share [95 % Wilson interval] (items); harmonic mean of the three: mean over folds.", "",
              run_intervals(metrics).to_markdown(index=False), "",
              "## Where the stubborn neurons sit", "",
              "Share of the top-k neurons by A's usage per module type (uniform = share of all neurons):", "",
              location[location.by == "type"].drop(columns="by").round(3).to_markdown(index=False), ""]
    overlap = position_overlap(usage_paths["A"], usage_score, ks)
    if len(overlap):
        mean = overlap.groupby(["k", "strategy", "neurons"], as_index=False)[["jaccard", "shared"]].mean()
        lines += ["## Usage over all real positions vs answer positions only", "",
                  "Stubborn (top-k) and plastic (bottom-k) sets by A's usage summed over every real position "
                  "(all_real, the default and the original's choice) or only over the positions predicting "
                  f"answer tokens (answer); Jaccard index and shared share, mean over {overlap.fold.nunique()} "
                  "fold(s):", "", mean.round(3).to_markdown(index=False), ""]
    if not swept:
        lines += ["No learning-rate or epoch sweep configured (lr_ratio or epochs lists in updates.scenarios); "
                  "with a constant learning rate, "
                  "the per-epoch curves above already show what fewer epochs give.", ""]
    text = "\n".join(lines)
    write_text(text, out["summary"])
    return text
