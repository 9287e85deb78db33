"""Tables and figures of the dissonance-awareness experiment (all from tidy tables).

Every accuracy carries n (distinct test samples) and a 95 % interval. A configuration is run on
several splits; each test sample gets its share of correct predictions over the splits in which it
was tested, the accuracy is the mean of these shares (each sample weighs the same), and the interval
is a percentile bootstrap over subject groups (:func:`group_bootstrap`). Two feature sets are
compared on the same samples and splits by the same bootstrap of the per-sample difference.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from workflow_scripts.awareness.classify import BASELINE_SETS, HEADLINE_SETS
from workflow_scripts.awareness.samples import CLASSES
from workflow_scripts.io import atomic_path, write_parquet, write_text
from workflow_scripts.reports.plotting import pyplot, save_figure

CONFIG = ["setting", "probe", "feature_set", "normalisation", "classifier"]
REPS = 10_000
ALPHA = 0.05
SET_LABELS = {
    "both": "internal (gradients + activations, raw)",
    "output": "output-only (next-token distributions)",
    "baseline:logprob": "target log-probability",
    "baseline:tokens": "token count",
}
SHORT_LABELS = {"output": "output-only", "baseline:logprob": "log-probability", "baseline:tokens": "token count"}
SETTING_TITLES = {
    "pretrained": "Pre-trained setting (familiar = facts the base model knows)",
    "finetuned": "Fine-tuned setting (familiar = facts the model was fine-tuned on until it knew them)",
}


def group_bootstrap(values, groups, reps: int = REPS, seed: int = 0) -> dict:
    """Mean of ``values`` with a 95 % percentile interval and a two-sided p-value against 0,
    resampling whole groups with replacement (each replicate: as many groups as there are, their
    samples' sum over their samples' count).

    A one-stage cluster bootstrap: subject groups are small (one to a few samples, e.g. a fact's
    familiar and dissonant versions), so resampling samples within them as well (the two-stage
    ``evaluation.stats.paired_bootstrap``, made for a few large folds) would add spurious variance.
    The p-value follows that function's convention: twice the smaller share of replicate means on
    either side of 0, capped at 1 (1 when every value is 0; 0 when no replicate reaches 0, which the
    report prints as p < 2 / reps)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return {"mean": np.nan, "low": np.nan, "high": np.nan, "p_value": np.nan, "n": 0, "n_groups": 0}
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    sums, counts = np.bincount(inverse, weights=values), np.bincount(inverse).astype(np.float64)
    n_groups = len(sums)
    rng = np.random.default_rng(seed)
    means = np.empty(reps)
    for start in range(0, reps, 1000):  # in chunks, to bound memory
        draw = rng.integers(0, n_groups, size=(min(1000, reps - start), n_groups))
        means[start:start + len(draw)] = sums[draw].sum(1) / counts[draw].sum(1)
    low, high = np.quantile(means, [0.025, 0.975])
    p = min(1.0, 2 * min(np.mean(means <= 0), np.mean(means >= 0)))
    return {"mean": float(values.mean()), "low": float(low), "high": float(high), "p_value": float(p),
            "n": int(len(values)), "n_groups": int(n_groups)}


def per_sample(predictions: pd.DataFrame) -> pd.DataFrame:
    """Per configuration and test sample: its share of correct predictions over the splits in which it
    was tested (``score``) and how many those were (``tests``)."""
    keys = CONFIG + ["sample_id", "group", "label"]
    return (predictions.groupby(keys, sort=False).correct.agg(score="mean", tests="size").reset_index())


def _interval(scores: pd.DataFrame, prefix: str) -> dict:
    b = group_bootstrap(scores.score, scores.group)
    return {prefix: b["mean"], f"{prefix}_lo": b["low"], f"{prefix}_hi": b["high"], f"{prefix}_n": b["n"]}


def summary_table(metrics: pd.DataFrame, predictions: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration: accuracy and familiar-vs-dissonant accuracy (per-sample means) with
    95 % group-bootstrap intervals and n, the mean and std of the accuracy over splits, macro F1."""
    by_split = metrics.groupby(CONFIG).agg(
        accuracy_over_splits=("accuracy", "mean"), accuracy_std=("accuracy", "std"), macro_f1=("macro_f1", "mean"),
        splits=("seed", "nunique"), headline=("headline", "any"),
    )
    rows = []
    for key, scores in per_sample(predictions).groupby(CONFIG, sort=False):
        hard = scores[scores.label.isin(["familiar", "dissonant"])]
        rows.append({**dict(zip(CONFIG, key)), **_interval(scores, "accuracy"),
                     **_interval(hard, "fam_vs_diss_accuracy"), "groups": scores.group.nunique()})
    table = pd.DataFrame(rows).merge(by_split.reset_index(), on=CONFIG)
    return table.sort_values(CONFIG).reset_index(drop=True)


def paired_tests(predictions: pd.DataFrame, reference: str = "both", others=BASELINE_SETS) -> pd.DataFrame:
    """Per setting and probe, the headline ``reference`` set against each of ``others`` on the same
    test samples and splits: the mean per-sample difference in correctness (reference - other), its
    95 % interval and two-sided p (:func:`group_bootstrap`), and n."""
    scores = per_sample(predictions[predictions.headline])
    rows = []
    for (setting, probe), part in scores.groupby(["setting", "probe"], sort=False):
        ref = part[part.feature_set == reference]
        for other in others:
            pair = ref.merge(part[part.feature_set == other], on=["sample_id", "group", "label"],
                             suffixes=("", "_other"))
            if pair.empty:
                continue
            b = group_bootstrap(pair.score - pair.score_other, pair.group)
            rows.append({"setting": setting, "probe": probe, "reference": reference, "baseline": other,
                         "difference": b["mean"], "low": b["low"], "high": b["high"], "p_value": b["p_value"],
                         "n": b["n"], "reference_accuracy": pair.score.mean(),
                         "baseline_accuracy": pair.score_other.mean()})
    return pd.DataFrame(rows, columns=["setting", "probe", "reference", "baseline", "difference", "low", "high",
                                       "p_value", "n", "reference_accuracy", "baseline_accuracy"])


def fmt_acc(value, low, high, n=None) -> str:
    """'0.712 [0.651, 0.770] (n=282)'."""
    if pd.isna(value):
        return "–"
    text = f"{value:.3f} [{low:.3f}, {high:.3f}]"
    return text if n is None else f"{text} (n={int(n)})"


def fmt_measure(row, name: str) -> str:
    """A summary row's ``name`` with its interval and n."""
    low, high, n = (getattr(row, f"{name}_{k}") for k in ("lo", "hi", "n"))
    return fmt_acc(getattr(row, name), low, high, n)


def fmt_p(p: float, reps: int = REPS) -> str:
    """A bootstrap p-value: '0.031', '4e-04', or '< 2e-04' when no replicate reached 0."""
    if pd.isna(p):
        return "–"
    if p == 0:
        return f"< {2 / reps:.0e}"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.0e}"


def p_text(p: float) -> str:
    """'p = 0.031' or 'p < 2e-04'."""
    text = fmt_p(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def probe_order(probes) -> list[str]:
    """The paraphrase probe first (the headline), then the training prompt, then any other."""
    rank = {"paraphrase": 0, "prompt": 1}
    return sorted(dict.fromkeys(probes), key=lambda p: (rank.get(p, 2), p))


def headline_table(summary: pd.DataFrame, tests: pd.DataFrame, setting: str) -> pd.DataFrame:
    """The headline of one setting: per probe (paraphrase first) and headline feature set, accuracy and
    familiar-vs-dissonant accuracy with intervals and n, and internal minus that set with p."""
    part = summary[(summary.setting == setting) & summary.headline & summary.feature_set.isin(HEADLINE_SETS)]
    rows = []
    for probe in probe_order(part.probe):
        for feature_set in HEADLINE_SETS:
            row = part[(part.probe == probe) & (part.feature_set == feature_set)]
            if row.empty:
                continue
            r = row.iloc[0]
            test = tests[(tests.setting == setting) & (tests.probe == probe) & (tests.baseline == feature_set)]
            t = test.iloc[0] if len(test) else None
            rows.append({
                "probe": probe, "feature set": SET_LABELS.get(feature_set, feature_set),
                "accuracy [95 % interval] (n)": fmt_measure(r, "accuracy"),
                "familiar vs dissonant [95 % interval] (n)": fmt_measure(r, "fam_vs_diss_accuracy"),
                "internal − this [95 % interval]":
                    "–" if t is None else f"{t.difference:+.3f} [{t.low:+.3f}, {t.high:+.3f}]",
                "p": "–" if t is None else fmt_p(t.p_value),
                "splits": int(r.splits),
            })
    return pd.DataFrame(rows)


def verdicts(tests: pd.DataFrame, setting: str) -> list[str]:
    """One line per probe: internal features beat the baselines only where every paired test gives
    p < 0.05 in their favour; otherwise, per baseline, what the paired test supports."""
    lines = []
    part = tests[tests.setting == setting]
    for probe in probe_order(part.probe):
        rows = part[part.probe == probe]
        wins = (rows.p_value < ALPHA) & (rows.difference > 0)
        if len(rows) and wins.all():
            ps = "; ".join(f"vs {SHORT_LABELS.get(b, b)}: {d:+.3f}, {p_text(p)}"
                           for b, d, p in zip(rows.baseline, rows.difference, rows.p_value))
            lines.append(f"- {probe} probe: **internal features beat the baselines** ({ps}).")
            continue
        parts = []
        for t in rows.itertuples():
            if t.p_value < ALPHA and t.difference > 0:
                verdict = "internal features beat it"
            elif t.p_value < ALPHA:
                verdict = "**the baseline is better**"
            else:
                verdict = "not resolved at this size"
            parts.append(f"vs {SHORT_LABELS.get(t.baseline, t.baseline)}: {verdict} ({t.difference:+.3f}, "
                         f"{p_text(t.p_value)}, n={t.n})")
        lines.append(f"- {probe} probe: " + "; ".join(parts) + ".")
    return lines


def all_configurations(summary: pd.DataFrame) -> pd.DataFrame:
    """Every configuration, accuracies as 'value [interval] (n)'."""
    return pd.DataFrame({
        **{k: summary[k] for k in CONFIG},
        "accuracy [95 % interval] (n)": [fmt_measure(r, "accuracy") for r in summary.itertuples()],
        "familiar vs dissonant [95 % interval] (n)": [fmt_measure(r, "fam_vs_diss_accuracy")
                                                      for r in summary.itertuples()],
        "splits": summary.splits,
    })


def headline_config(metrics: pd.DataFrame) -> dict:
    """The headline configuration: the paraphrase probe (when there is one), gradients + activations
    (raw), the headline classifier."""
    head = metrics[metrics.headline & (metrics.feature_set == "both")]
    return {"probe": probe_order(head.probe)[0], "feature_set": "both", "normalisation": "raw",
            "classifier": head.classifier.iloc[0], "splits": int(head.seed.nunique())}


def plot_confusion(confusion: pd.DataFrame, metrics: pd.DataFrame, dest: str) -> None:
    """Row-normalised confusion of the headline configuration, summed over its splits, per setting."""
    plt = pyplot()
    settings = list(dict.fromkeys(confusion.setting))
    fig, axes = plt.subplots(1, len(settings), figsize=(4.2 * len(settings), 3.8), squeeze=False)
    head = headline_config(metrics)
    for ax, setting in zip(axes[0], settings):
        sel = confusion[(confusion.setting == setting) & confusion.headline & (confusion.probe == head["probe"])
                        & (confusion.feature_set == head["feature_set"])
                        & (confusion.normalisation == head["normalisation"]) & (confusion.classifier == head["classifier"])]
        mat = sel.groupby(["true", "predicted"])["count"].sum().unstack().reindex(index=CLASSES, columns=CLASSES).fillna(0)
        rates = mat.to_numpy() / np.maximum(mat.to_numpy().sum(1, keepdims=True), 1)
        ax.imshow(rates, vmin=0, vmax=1, cmap="Blues")
        for i in range(3):
            for j in range(3):
                ax.text(j, i, f"{rates[i, j]:.2f}", ha="center", va="center", color="white" if rates[i, j] > 0.5 else "black")
        ax.set_xticks(range(3), CLASSES)
        ax.set_yticks(range(3), CLASSES)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{setting}: {head['probe']} probe, {head['classifier']}, internal (raw), "
                     f"{sel.seed.nunique()} splits", fontsize=9)
    fig.tight_layout()
    save_figure(fig, dest)


def plot_feature_sets(summary: pd.DataFrame, dest: str) -> None:
    """Accuracy with its 95 % interval per feature set (the headline classifier, raw or no normalisation)."""
    plt = pyplot()
    clf = summary[summary.headline].classifier.iloc[0]
    order = ["gradients", "activations", "both", "output", "both+output", "baseline:logprob", "baseline:tokens"]
    part = summary[(summary.classifier == clf) & summary.normalisation.isin(["raw", "none"])
                   & summary.feature_set.isin(order)]
    groups = [(k, part[(part.setting == k[0]) & (part.probe == k[1])])
              for k in dict.fromkeys(zip(part.setting, part.probe))]
    fig, ax = plt.subplots(figsize=(10, 3.8))
    width = 0.8 / max(1, len(groups))
    for g, ((setting, probe), sub) in enumerate(groups):
        stats = sub.set_index("feature_set").reindex(order)
        err = np.stack([stats.accuracy - stats.accuracy_lo, stats.accuracy_hi - stats.accuracy]).clip(0)
        ax.bar(np.arange(len(order)) + g * width, stats.accuracy, width, yerr=np.nan_to_num(err), capsize=3,
               label=f"{setting} / {probe}")
    ax.set_xticks(np.arange(len(order)) + width * (len(groups) - 1) / 2,
                  [o.replace("baseline:", "") for o in order], fontsize=8)
    ax.axhline(1 / 3, color="grey", ls=":", label="chance")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel(f"test accuracy ({clf}), 95 % interval")
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


def report_text(summary: pd.DataFrame, headline: pd.DataFrame, tests: pd.DataFrame, metrics: pd.DataFrame,
                model: str, test_fraction: float | None = None) -> str:
    """The readable summary (report/awareness.md): ``summary`` of every configuration over all its runs,
    ``headline`` of the headline runs alone, ``tests`` from :func:`paired_tests`."""
    head = headline_config(metrics)
    ablation_seeds = sorted(metrics[~metrics.headline].seed.unique()) or sorted(metrics.seed.unique())
    share = f"about {test_fraction:.0%} of the samples" if test_fraction else "one fold of the samples"
    text = [
        "# Dissonance awareness", "",
        f"Model: {model}.", "",
        "Can a classifier tell familiar facts, the same facts with a contradicting object (dissonant) and "
        "invented facts (novel) apart from the model's internal activations and gradients, better than from "
        "the next-token distributions (output-only), the target's log-probability or the text's length alone? "
        "Chance is 1/3.", "",
        "How to read the numbers. Test sets hold whole subject groups (every sample sharing a subject: real "
        "facts by their subject, so a fact's familiar and dissonant versions stay together; invented facts by "
        "connected components over their invented subject and object names, which novel facts reuse), "
        f"{share}, stratified by class. The headline runs the {head['classifier']} classifier on "
        f"{head['splits']} such splits; the ablations on splits {', '.join(map(str, ablation_seeds))}. "
        "**Accuracy** is the mean over the n distinct test samples of each sample's share of correct "
        "predictions over the splits in which it was tested (close to the mean accuracy over splits, "
        "`accuracy_over_splits` in the CSV); **[95 % interval]** is a percentile bootstrap over subject groups "
        f"({REPS:,} draws) of that mean; **n** counts distinct test samples. Familiar vs dissonant is the "
        "accuracy (of the three-class predictions) on the familiar and dissonant test samples alone, the hard "
        "pair. **internal − this** is a paired bootstrap over groups of the per-sample difference in "
        "correctness between the internal features and that baseline, on the same samples and splits, with "
        "its 95 % interval and two-sided p; "
        f"a difference is called only at p < {ALPHA}.", "",
    ]
    for setting in dict.fromkeys(metrics.setting):  # in the configured order
        text += [f"## {SETTING_TITLES.get(setting, setting)}", ""]
        if setting == "finetuned":
            text += ["In the fine-tuned setting the training-prompt probe scores the very sentences the model was "
                     "fine-tuned on (memorised), so the paraphrase probe is the headline.", ""]
        table = headline_table(headline, tests, setting)
        if not table.empty:
            text += [table.to_markdown(index=False), ""]
        text += verdicts(tests, setting) + [""]
    classifiers = summary[(summary.feature_set == "both") & (summary.normalisation == "raw")]
    text += ["## Classifiers on gradients + activations (raw)", "",
             all_configurations(classifiers).to_markdown(index=False), "",
             "## All configurations", "",
             "Ablations on fewer splits have wider intervals; the headline configurations appear with all their "
             "splits.", "",
             all_configurations(summary).to_markdown(index=False), ""]
    return "\n".join(text)


def write_awareness_report(settings, inputs: dict, outputs: dict, model: str | None = None,
                           test_fraction: float | None = None) -> pd.DataFrame:
    """Merged metrics, paired tests, the CSV summary, report/awareness.md (``model``: what the model is,
    from ``models.sources.describe_model``) and the figures."""
    def cat(paths, with_setting=False):
        parts = [pd.read_parquet(p) for p in paths]
        if with_setting:
            parts = [p.assign(setting=s) for p, s in zip(parts, settings)]
        return pd.concat(parts, ignore_index=True)

    metrics = cat(inputs["metrics"])
    write_parquet(metrics, outputs["metrics"])
    predictions = cat(inputs["predictions"])
    summary = summary_table(metrics, predictions)
    headline = summary_table(metrics[metrics.headline], predictions[predictions.headline])
    tests = paired_tests(predictions)
    with atomic_path(outputs["csv"]) as tmp:
        summary.to_csv(tmp, index=False)
    if "paired" in outputs:
        write_parquet(tests, outputs["paired"])
    text = report_text(summary, headline, tests, metrics,
                       model or "the configured model, prompted without a chat template", test_fraction)
    write_text(text, outputs["summary"])
    plot_confusion(cat(inputs["confusion"]), metrics, outputs["confusion"])
    plot_feature_sets(summary, outputs["feature_sets"])
    plot_importance(cat(inputs["importance"]), outputs["importance"])
    catalog = pd.read_parquet(inputs["catalog"][0])
    plot_distributions(cat(inputs["samples"], True), cat(inputs["features"], True), catalog, outputs["distributions"])
    return summary
