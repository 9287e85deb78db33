"""Dissonance awareness: features (shape, names, batched = one at a time), samples, splits, classifiers."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from workflow_scripts.awareness.classify import feature_sets, split_by_fact
from workflow_scripts.awareness.experiment import classify, feature_catalog, load_classifier
from workflow_scripts.awareness.samples import build_samples
from workflow_scripts.facts.fictionalise import fictionalise
from workflow_scripts.features.internal import MODALITIES, NORMALISATIONS, STATISTICS, flatten, internal_features
from workflow_scripts.features.output import output_feature_names, output_features
from workflow_scripts.io import write_parquet
from workflow_scripts.models.architectures import linear_modules

TEXTS = [
    "The capital of France is Paris",
    "The capital of France is Tokyo",
    "Eiffel Tower is located in the city of Paris",
    "The official language of Japan is Japanese",
    "Lionel Messi is known for the sport of football",
    "France is located in the continent of Europe",
    "The capital of Japan is Tokyo",
]


def test_internal_feature_shape_and_catalog(tiny):
    family, model, tok = tiny
    feats, index = internal_features(model, tok, TEXTS, batch_size=4)
    n_modules = len(linear_modules(model))
    assert feats.shape == (len(TEXTS), len(NORMALISATIONS), len(MODALITIES), n_modules, len(STATISTICS))
    assert np.isfinite(feats).all()
    catalog = feature_catalog(index)
    assert len(catalog) == flatten(feats).shape[1] + len(output_feature_names())
    assert catalog.feature.is_unique
    internal = catalog[catalog.family == "internal"]
    assert set(internal.statistic) == set(STATISTICS) and set(internal.modality) == set(MODALITIES)
    assert sorted(internal.block.unique()) == [0, 1]
    # min <= q25 <= median <= q75 <= max, for every text, module and normalisation
    s = {name: feats[..., i] for i, name in enumerate(STATISTICS)}
    assert (s["min"] <= s["q25"] + 1e-6).all() and (s["q25"] <= s["median"] + 1e-6).all()
    assert (s["median"] <= s["q75"] + 1e-6).all() and (s["q75"] <= s["max"] + 1e-6).all()


def test_batched_features_equal_one_at_a_time(tiny):
    _, model, tok = tiny
    batched, _ = internal_features(model, tok, TEXTS, batch_size=4)
    single = np.concatenate([internal_features(model, tok, [t], batch_size=1)[0] for t in TEXTS])
    assert np.abs(batched - single).max() <= 1e-4


def test_gradients_are_taken_without_changing_the_model(tiny):
    _, model, tok = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    internal_features(model, tok, TEXTS[:2])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_usage_normalisation(tiny):
    _, model, tok = tiny
    ones = {m.name: torch.full((m.out_features,), 3.0) for m in linear_modules(model)}
    feats, _ = internal_features(model, tok, TEXTS[:3], usage=ones)
    np.testing.assert_allclose(feats[:, 2], feats[:, 0], rtol=1e-5, atol=1e-6)  # constant usage = raw
    doubled = {k: v.clone() for k, v in ones.items()}
    first = linear_modules(model)[0].name
    doubled[first][: len(doubled[first]) // 2] = 6.0  # half the units used twice as much
    feats2, _ = internal_features(model, tok, TEXTS[:3], usage=doubled)
    assert not np.allclose(feats2[:, 2, :, 0], feats[:, 2, :, 0])
    np.testing.assert_allclose(feats2[:, 2, :, 1:], feats[:, 2, :, 1:], rtol=1e-5, atol=1e-6)


def test_output_features_vary_and_are_meaningful(tiny):
    _, model, tok = tiny
    out = output_features(model, tok, TEXTS, batch_size=3)
    names = output_feature_names()
    assert out.shape == (len(TEXTS), len(names))
    # nothing is constant by construction (histogram bins can be empty for a random tiny model)
    varying = names.feature != "hist"
    assert (out[:, varying.to_numpy()].std(0) > 0).all(), names[varying & (out.std(0) == 0)]
    # p_next after dropping the last token is the probability of that last token
    ids = tok(TEXTS[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        probs = torch.softmax(model(ids).logits[0, -2], -1)
    col = names.index[(names.dropped_tokens == 1) & (names.feature == "p_next")][0]
    assert out[0, col] == pytest.approx(float(probs[ids[0, -1]]), rel=1e-4)
    hist = names.index[(names.dropped_tokens == 0) & (names.feature == "hist")]
    np.testing.assert_allclose(out[:, hist].sum(1), 1.0, atol=1e-5)


def test_samples_are_balanced_and_paired(starter):
    novel = fictionalise(starter, 30, seed=0)
    known = {r["case_id"] for r in starter[:40]}
    samples = build_samples(starter, known, novel, n_per_class=12, seed=0)
    counts = samples.groupby(["probe", "label"]).size()
    assert (counts == 12).all() and len(counts) == 6
    fam = samples[(samples.label == "familiar") & (samples.probe == "prompt")]
    dis = samples[(samples.label == "dissonant") & (samples.probe == "prompt")]
    assert fam.group.tolist() == dis.group.tolist()
    by_id = {r["case_id"]: r for r in starter}
    for g, text in zip(dis.group, dis.text):
        assert text.endswith(" " + by_id[g]["requested_rewrite"]["target_new"]["str"])
        assert g in known


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_split_by_fact_never_straddles(seed):
    groups = np.repeat(np.arange(30), 2)
    train, test = split_by_fact(groups, 0.25, seed)
    assert not set(groups[train]) & set(groups[test])
    assert len(train) + len(test) == len(groups)


def _synthetic(tmp_path, separable=True, n=24):
    """Samples and features where class information sits in gradient columns only."""
    rng = np.random.default_rng(0)
    labels = ["familiar", "dissonant", "novel"]
    rows = []
    for probe in ("prompt", "paraphrase"):
        for g in range(n):
            for label in labels[:2]:
                rows.append({"group": g, "label": label, "probe": probe})
            rows.append({"group": 1000 + g, "label": "novel", "probe": probe})
    samples = pd.DataFrame(rows)
    samples.insert(0, "sample_id", range(len(samples)))
    from workflow_scripts.features.internal import FeatureIndex

    index = FeatureIndex(("m0", "m1", "m2", "m3"), ("attn", "mlp", "attn", "mlp"), (0, 0, 1, 1))
    catalog = feature_catalog(index)
    X = rng.normal(size=(len(samples), len(catalog)))
    if separable:
        grad = (catalog.family == "internal") & (catalog.modality == "gradient")
        X[:, grad.to_numpy()] += 3 * samples.label.map({l: i for i, l in enumerate(labels)}).to_numpy()[:, None]
    features = pd.DataFrame(X, columns=catalog.feature)
    features.insert(0, "sample_id", samples.sample_id)
    paths = {k: tmp_path / f"{k}.parquet" for k in ("samples", "features", "catalog")}
    write_parquet(samples, paths["samples"])
    write_parquet(features, paths["features"])
    write_parquet(catalog, paths["catalog"])
    return paths, catalog


def test_feature_sets_select_by_catalog(tmp_path):
    _, catalog = _synthetic(tmp_path)
    sets = feature_sets(catalog, "zscore", block_ranges=2)
    grad = catalog[sets["gradients"]]
    assert set(grad.modality) == {"gradient"} and set(grad.normalisation) == {"zscore"}
    assert set(catalog[sets["output"]].family) == {"output"}
    assert set(catalog[sets["blocks:1-1"]].block) == {1}
    assert set(catalog[sets["module:mlp"]].module) == {"mlp"}
    assert sets["both+output"].sum() == sets["both"].sum() + sets["output"].sum()


def test_classification_learns_is_deterministic_and_saves_safely(tmp_path):
    paths, catalog = _synthetic(tmp_path)
    outs = [{k: tmp_path / f"{i}_{k}" for k in ("metrics", "confusion", "importance", "model", "model_info")}
            for i in range(2)]
    runs = [classify("pretrained", str(paths["samples"]), str(paths["features"]), str(paths["catalog"]), out,
                     seeds=[0, 1], classifiers=["logreg", "rf"], ablation_classifier="logreg",
                     test_fraction=0.25, block_ranges=2) for out in outs]
    pd.testing.assert_frame_equal(runs[0], runs[1])
    m = runs[0]
    grads = m[(m.feature_set == "gradients")].accuracy.mean()
    acts = m[(m.feature_set == "activations")].accuracy.mean()
    assert grads > 0.9 and acts < 0.6  # the signal is where it was put, and only there
    assert set(m.normalisation) == {"raw", "zscore", "usage", "none"}
    assert m.fam_vs_diss_accuracy.notna().all()
    info = json.loads(outs[0]["model_info"].read_text())
    clf = load_classifier(str(outs[0]["model"]))
    assert list(clf.classes_) == info["classes"]
    importance = pd.read_parquet(outs[0]["importance"])
    top = importance.groupby("modality").importance.sum()
    assert top["gradient"] > top["activation"]


def test_statistics_match_numpy():
    from workflow_scripts.features.internal import vector_statistics

    x = torch.randn(5, 37)
    got = vector_statistics(x).numpy()
    a = x.numpy()
    want = np.stack([a.mean(1), a.std(1), a.min(1), *np.percentile(a, [25, 50, 75], axis=1), a.max(1)], 1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
