"""Entry points of the dissonance-awareness stages: features, classification, report tables."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import torch

from workflow_scripts.awareness.classify import (CLASSIFIERS, HEADLINE_SETS, feature_sets, fit_and_score,
                                                 split_by_group)
from workflow_scripts.awareness.samples import CLASSES
from workflow_scripts.features.baseline import baseline_feature_names, baseline_features
from workflow_scripts.features.internal import FeatureIndex, flatten, internal_features
from workflow_scripts.features.output import output_feature_names, output_features
from workflow_scripts.io import atomic_path, write_json, write_parquet
from workflow_scripts.models.loading import load_model
from workflow_scripts.training.usage import load_usage

log = logging.getLogger(__name__)


def feature_catalog(index: FeatureIndex) -> pd.DataFrame:
    """One row per feature column: its id and what it is (tidy; selections query this table).
    Families: internal, output (output-only), baseline (one-feature baselines, last)."""
    internal = index.columns()
    internal.insert(0, "family", "internal")
    output = output_feature_names().rename(columns={"feature": "output_feature", "index": "output_index"})
    output.insert(0, "family", "output")
    baseline = baseline_feature_names()
    baseline.insert(0, "family", "baseline")
    cat = pd.concat([internal, output, baseline], ignore_index=True)
    cat.insert(0, "feature", [f"f{i:05d}" for i in range(len(cat))])
    cat["block"] = cat["block"].astype("Int64")
    for col in ("dropped_tokens", "output_index"):
        cat[col] = cat[col].astype("Int64")
    return cat


def extract_features(model_dir: str, samples_path: str, usage_path: str | None, features_path: str,
                     catalog_path: str, batch_size: int = 16) -> pd.DataFrame:
    model, tokenizer = load_model(model_dir)
    samples = pd.read_parquet(samples_path)
    usage = load_usage(usage_path) if usage_path else None
    missing = {"prompt", "target"} - set(samples.columns)
    if missing:
        raise ValueError(f"{samples_path} has no {sorted(missing)} columns; rebuild the samples")
    texts = samples.text.tolist()
    internal, index = internal_features(model, tokenizer, texts, batch_size, usage=usage, progress=True)
    with torch.inference_mode():
        output = output_features(model, tokenizer, texts, batch_size=32, progress=True)
        baseline = baseline_features(model, tokenizer, samples.prompt.tolist(), samples.target.tolist(), texts,
                                     batch_size=32, progress=True)
    catalog = feature_catalog(index)
    matrix = np.concatenate([flatten(internal), output, baseline], axis=1)
    table = pd.DataFrame(matrix, columns=catalog.feature.tolist())
    table.insert(0, "sample_id", samples.sample_id.to_numpy())
    write_parquet(table, features_path)
    write_parquet(catalog, catalog_path)
    log.info("features: %d samples x %d columns", *matrix.shape)
    return table


def run_plan(probes: list[str], set_names: list[str], seeds: list[int], resplits: int, classifiers: list[str],
             ablation_classifier: str) -> pd.DataFrame:
    """Every classification run of one setting, once each: probe, feature_set, normalisation,
    classifier, seed (the split's and the classifier's), headline.

    Headline: the ablation classifier on gradients + activations (raw), output-only features and the
    one-feature baselines, over resplits 0 .. resplits - 1. Ablations, over ``seeds``: every classifier
    on gradients + activations (raw), the ablation classifier on the z-scored and usage-normalised
    ones and on every other raw feature set. A run in both lists runs once (the split of seed s is the
    split of resplit s)."""
    def norm(feature_set):
        return "none" if feature_set == "output" or feature_set.startswith("baseline:") else "raw"

    rows = []
    for probe in probes:
        for feature_set in HEADLINE_SETS:
            rows += [(probe, feature_set, norm(feature_set), ablation_classifier, r) for r in range(resplits)]
        for seed in seeds:
            rows += [(probe, "both", "raw", name, seed) for name in classifiers]
            rows += [(probe, "both", n, ablation_classifier, seed) for n in ("zscore", "usage")]
            rows += [(probe, fs, norm(fs), ablation_classifier, seed) for fs in set_names
                     if fs != "both" and not fs.startswith("baseline:")]
    plan = pd.DataFrame(list(dict.fromkeys(rows)),
                        columns=["probe", "feature_set", "normalisation", "classifier", "seed"])
    plan["headline"] = (plan.feature_set.isin(HEADLINE_SETS) & plan.normalisation.isin(["raw", "none"])
                        & (plan.classifier == ablation_classifier) & plan.seed.lt(resplits))
    return plan


def classify(setting: str, samples_path: str, features_path: str, catalog_path: str, out: dict,
             seeds: list[int], classifiers: list[str], ablation_classifier: str, test_fraction: float,
             block_ranges: int, resplits: int = 10) -> pd.DataFrame:
    """All classification runs of one setting (:func:`run_plan`); writes metrics, confusion,
    per-sample test predictions of every run, importance and the best model."""
    samples = pd.read_parquet(samples_path)
    features = pd.read_parquet(features_path)
    catalog = pd.read_parquet(catalog_path)
    data = samples.merge(features, on="sample_id")
    sets = {n: feature_sets(catalog, n, block_ranges) for n in ("raw", "zscore", "usage")}
    sets["none"] = sets["raw"]
    probes = sorted(data.probe.unique())
    plan = run_plan(probes, list(sets["raw"]), seeds, resplits, classifiers, ablation_classifier)
    parts = {probe: data[data.probe == probe].reset_index(drop=True) for probe in probes}
    matrices = {probe: part[catalog.feature].to_numpy(np.float64) for probe, part in parts.items()}
    splits = {}
    rows, confusions, predictions, importances = [], [], [], []
    for run in plan.itertuples(index=False):
        part = parts[run.probe]
        cols = sets[run.normalisation][run.feature_set]
        y, groups = part.label.to_numpy(), part.group.to_numpy()
        if (run.probe, run.seed) not in splits:
            splits[run.probe, run.seed] = split_by_group(groups, y, test_fraction, run.seed)
        train, test = splits[run.probe, run.seed]
        metrics, cm, model, pred = fit_and_score(run.classifier, matrices[run.probe][:, cols], y, groups, train,
                                                 test, run.seed)
        key = {"setting": setting, **run._asdict()}
        rows.append({**key, **metrics})
        log.info("%s: accuracy %.3f, familiar-vs-dissonant %.3f", key, metrics["accuracy"],
                 metrics["fam_vs_diss_accuracy"])
        for i, t in enumerate(CLASSES):
            for j, p in enumerate(CLASSES):
                confusions.append({**key, "true": t, "predicted": p, "count": int(cm[i, j])})
        predictions.append(pd.DataFrame({**key, "sample_id": part.sample_id.to_numpy()[test],
                                         "group": groups[test], "label": y[test], "predicted": pred}))
        if run.classifier == "rf" and run.feature_set == "both" and run.normalisation == "raw":
            imp = model.named_steps["clf"].feature_importances_
            importances.append(catalog[cols].assign(importance=imp, probe=run.probe, seed=run.seed,
                                                    setting=setting))
    metrics = pd.DataFrame(rows)
    write_parquet(metrics, out["metrics"])
    write_parquet(pd.DataFrame(confusions), out["confusion"])
    preds = pd.concat(predictions, ignore_index=True)
    write_parquet(preds.assign(correct=preds.label == preds.predicted), out["predictions"])
    imp = pd.concat(importances, ignore_index=True) if importances else catalog.head(0).assign(importance=[])
    write_parquet(imp, out["importance"])
    save_best_classifier(setting, data, catalog, metrics, block_ranges, out["model"], out["model_info"])
    return metrics


def save_best_classifier(setting, data, catalog, metrics, block_ranges, model_path, info_path) -> dict:
    """Refit the best configuration (by mean test accuracy over seeds, on training-prompt probes; an
    optimistic selection, recorded as such) on all samples and save it with skops (no pickle), plus a
    JSON description of its inputs."""
    import skops.io as sio

    prompt = metrics[metrics.probe == "prompt"] if (metrics.probe == "prompt").any() else metrics
    mean = prompt.groupby(["feature_set", "normalisation", "classifier"]).accuracy.mean()
    feature_set, normalisation, name = mean.idxmax()
    cols = feature_sets(catalog, "raw" if normalisation == "none" else normalisation, block_ranges)[feature_set]
    part = data[data.probe == prompt.probe.iloc[0]]
    spec = CLASSIFIERS[name]
    runs = prompt[(prompt.feature_set == feature_set) & (prompt.normalisation == normalisation)
                  & (prompt.classifier == name)]
    params = runs.best_params.mode().iloc[0]  # the hyperparameters most seeds' grid searches chose
    model = spec.make(0).set_params(**json.loads(params))
    model.fit(part[catalog.feature[cols]].to_numpy(np.float64), part.label.to_numpy())
    with atomic_path(model_path) as tmp:
        sio.dump(model, tmp)
    info = {"setting": setting, "feature_set": feature_set, "normalisation": normalisation, "classifier": name,
            "hyperparameters": json.loads(params),
            # chosen as the best mean test accuracy over seeds, so this figure is optimistic
            "selection_accuracy": float(mean.max()),
            "features": catalog.feature[cols].tolist(), "classes": list(model.classes_)}
    write_json(info, info_path)
    return info


def load_classifier(model_path: str):
    """Load a saved classifier, trusting only scikit-learn and numpy types."""
    import skops.io as sio

    untrusted = sio.get_untrusted_types(file=model_path)
    unknown = [t for t in untrusted if not t.startswith(("sklearn.", "numpy."))]
    if unknown:
        raise ValueError(f"{model_path} contains types outside scikit-learn/numpy: {unknown}")
    return sio.load(model_path, trusted=untrusted)
