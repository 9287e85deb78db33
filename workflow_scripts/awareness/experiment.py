"""Entry points of the dissonance-awareness stages: features, classification, report tables."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import torch

from workflow_scripts.awareness.classify import CLASSIFIERS, feature_sets, fit_and_score, split_by_fact
from workflow_scripts.awareness.samples import CLASSES
from workflow_scripts.features.internal import FeatureIndex, flatten, internal_features
from workflow_scripts.features.output import output_feature_names, output_features
from workflow_scripts.io import atomic_path, write_json, write_parquet
from workflow_scripts.models.loading import load_model
from workflow_scripts.training.usage import load_usage

log = logging.getLogger(__name__)


def feature_catalog(index: FeatureIndex) -> pd.DataFrame:
    """One row per feature column: its id and what it is (tidy; selections query this table)."""
    internal = index.columns()
    internal.insert(0, "family", "internal")
    output = output_feature_names().rename(columns={"feature": "output_feature", "index": "output_index"})
    output.insert(0, "family", "output")
    cat = pd.concat([internal, output], ignore_index=True)
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
    texts = samples.text.tolist()
    internal, index = internal_features(model, tokenizer, texts, batch_size, usage=usage, progress=True)
    with torch.inference_mode():
        output = output_features(model, tokenizer, texts, batch_size=32, progress=True)
    catalog = feature_catalog(index)
    matrix = np.concatenate([flatten(internal), output], axis=1)
    table = pd.DataFrame(matrix, columns=catalog.feature.tolist())
    table.insert(0, "sample_id", samples.sample_id.to_numpy())
    write_parquet(table, features_path)
    write_parquet(catalog, catalog_path)
    log.info("features: %d samples x %d columns", *matrix.shape)
    return table


def classify(setting: str, samples_path: str, features_path: str, catalog_path: str, out: dict,
             seeds: list[int], classifiers: list[str], ablation_classifier: str, test_fraction: float,
             block_ranges: int) -> pd.DataFrame:
    """All classification runs of one setting; writes metrics, confusion, importance, best model."""
    samples = pd.read_parquet(samples_path)
    features = pd.read_parquet(features_path)
    catalog = pd.read_parquet(catalog_path)
    data = samples.merge(features, on="sample_id")
    rows, confusions, importances = [], [], []

    def run(probe, feature_set, normalisation, name, cols, seed):
        part = data[data.probe == probe]
        X = part[catalog.feature[cols]].to_numpy(np.float64)
        y, groups = part.label.to_numpy(), part.group.to_numpy()
        train, test = split_by_fact(groups, test_fraction, seed)
        metrics, cm, model = fit_and_score(name, X, y, groups, train, test, seed)
        key = {"setting": setting, "probe": probe, "feature_set": feature_set, "normalisation": normalisation,
               "classifier": name, "seed": seed}
        rows.append({**key, **metrics})
        log.info("%s: accuracy %.3f, familiar-vs-dissonant %.3f", key, metrics["accuracy"],
                 metrics["fam_vs_diss_accuracy"])
        for i, t in enumerate(CLASSES):
            for j, p in enumerate(CLASSES):
                confusions.append({**key, "true": t, "predicted": p, "count": int(cm[i, j])})
        return model

    for probe in sorted(data.probe.unique()):
        for normalisation in ("raw", "zscore", "usage"):
            sets = feature_sets(catalog, normalisation, block_ranges)
            for seed in seeds:
                names = classifiers if normalisation == "raw" else [ablation_classifier]
                for name in names:
                    model = run(probe, "both", normalisation, name, sets["both"], seed)
                    if name == "rf" and normalisation == "raw":
                        imp = model.named_steps["clf"].feature_importances_
                        sel = catalog[sets["both"]]
                        importances.append(sel.assign(importance=imp, probe=probe, seed=seed, setting=setting))
                if normalisation != "raw":
                    continue
                for feature_set, cols in sets.items():
                    if feature_set != "both":
                        run(probe, feature_set, "raw" if feature_set != "output" else "none",
                            ablation_classifier, cols, seed)
    metrics = pd.DataFrame(rows)
    write_parquet(metrics, out["metrics"])
    write_parquet(pd.DataFrame(confusions), out["confusion"])
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
