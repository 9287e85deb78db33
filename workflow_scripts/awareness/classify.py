"""Classifiers of novel / familiar / dissonant from feature tables, with splits by subject group.

Classifiers live in a registry (name -> scikit-learn pipeline and a compact grid); hyperparameters
are chosen by grouped cross-validation on the training part only. Feature sets are selected by
querying the feature catalog (family, modality, module, block, statistic, baseline), never by column
positions. Test sets hold whole subject groups (see ``samples.py``) and are stratified by class.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score
from sklearn.model_selection import GridSearchCV, GroupKFold, GroupShuffleSplit, StratifiedGroupKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from workflow_scripts.awareness.samples import CLASSES


@dataclass(frozen=True)
class ClassifierSpec:
    make: Callable[[int], Pipeline]
    grid: dict


CLASSIFIERS: dict[str, ClassifierSpec] = {
    "svm": ClassifierSpec(
        lambda seed: Pipeline([("scale", StandardScaler()), ("clf", SVC(random_state=seed))]),
        {"clf__C": [1.0, 10.0], "clf__kernel": ["rbf", "poly"], "clf__degree": [2]},
    ),
    "logreg": ClassifierSpec(
        lambda seed: Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(max_iter=3000, random_state=seed))]),
        {"clf__C": [0.01, 0.1, 1.0]},
    ),
    "rf": ClassifierSpec(
        lambda seed: Pipeline([("scale", StandardScaler()), ("clf", RandomForestClassifier(n_estimators=200, random_state=seed, n_jobs=1))]),
        {"clf__max_depth": [None, 10], "clf__max_features": ["sqrt"]},
    ),
}


# The headline comparison: internal features against the output-only and one-feature baselines.
HEADLINE_SETS = ("both", "output", "baseline:logprob", "baseline:tokens")
BASELINE_SETS = ("output", "baseline:logprob", "baseline:tokens")


def feature_sets(catalog: pd.DataFrame, normalisation: str, block_ranges: int) -> dict[str, np.ndarray]:
    """Named boolean column selections. Internal features use the given normalisation; output and
    baseline features (family "output", "baseline") are never part of an internal set."""
    internal = (catalog.family == "internal") & (catalog.normalisation == normalisation)
    output = catalog.family == "output"
    sets = {
        "gradients": internal & (catalog.modality == "gradient"),
        "activations": internal & (catalog.modality == "activation"),
        "both": internal,
        "output": output,
        "both+output": internal | output,
    }
    for mtype in catalog.loc[internal, "module"].dropna().unique():
        sets[f"module:{mtype}"] = internal & (catalog.module == mtype)
    n_blocks = int(catalog.loc[internal, "block"].max()) + 1
    edges = np.linspace(0, n_blocks, block_ranges + 1).round().astype(int)
    for lo, hi in zip(edges[:-1], edges[1:]):
        if hi > lo:
            sets[f"blocks:{lo}-{hi - 1}"] = internal & catalog.block.between(lo, hi - 1)
    if "baseline" in catalog:
        for name in catalog.loc[catalog.family == "baseline", "baseline"]:
            sets[f"baseline:{name}"] = (catalog.family == "baseline") & (catalog.baseline == name)
    return {k: v.to_numpy() for k, v in sets.items()}


def split_by_group(groups: np.ndarray, labels: np.ndarray, test_fraction: float,
                   seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train/test indices such that no group (subject) is on both sides, classes stratified.

    One fold of a shuffled, seeded StratifiedGroupKFold with round(1 / test_fraction) folds, so the
    test part holds about ``test_fraction`` of the samples with about the classes' shares. With too
    few groups to stratify, a seeded GroupShuffleSplit."""
    n_groups = len(np.unique(groups))
    n_splits = min(max(2, round(1 / test_fraction)), n_groups)
    _, class_counts = np.unique(labels, return_counts=True)
    if n_splits >= 2 and class_counts.min() >= n_splits:
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        train, test = next(splitter.split(np.zeros(len(groups)), labels, groups=groups))
    else:
        splitter = GroupShuffleSplit(n_splits=1, test_size=test_fraction, random_state=seed)
        train, test = next(splitter.split(np.zeros(len(groups)), groups=groups))
    return np.sort(train), np.sort(test)


def fit_and_score(name: str, X: np.ndarray, y: np.ndarray, groups: np.ndarray, train: np.ndarray,
                  test: np.ndarray, seed: int):
    """Grid search by grouped CV on the training part, refit, score on the test part.

    Returns (metrics, confusion matrix, fitted model, test predictions in the order of ``test``)."""
    spec = CLASSIFIERS[name]
    n_folds = min(3, len(np.unique(groups[train])))
    search = GridSearchCV(spec.make(seed), spec.grid, cv=GroupKFold(n_splits=n_folds), n_jobs=1)
    search.fit(X[train], y[train], groups=groups[train])
    pred = search.predict(X[test])
    hard = np.isin(y[test], ["familiar", "dissonant"])
    metrics = {
        "accuracy": accuracy_score(y[test], pred),
        "macro_f1": f1_score(y[test], pred, average="macro", labels=list(CLASSES)),
        "fam_vs_diss_accuracy": accuracy_score(y[test][hard], pred[hard]) if hard.any() else np.nan,
        "n_train": int(len(train)),
        "n_test": int(len(test)),
        "best_params": json.dumps(search.best_params_, sort_keys=True, default=str),
    }
    cm = confusion_matrix(y[test], pred, labels=list(CLASSES))
    return metrics, cm, search.best_estimator_, pred
