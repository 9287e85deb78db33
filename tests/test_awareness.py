"""Dissonance awareness: features (shape, names, batched = one at a time, baselines), samples, subject
groups and splits, classifiers over resplits, paired bootstrap, the report."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from workflow_scripts.awareness.classify import HEADLINE_SETS, feature_sets, split_by_group
from workflow_scripts.awareness.experiment import classify, feature_catalog, load_classifier
from workflow_scripts.awareness.samples import build_samples, subject_groups
from workflow_scripts.facts.fictionalise import fictionalise
from workflow_scripts.features.baseline import baseline_feature_names, baseline_features
from workflow_scripts.features.internal import MODALITIES, NORMALISATIONS, STATISTICS, flatten, internal_features
from workflow_scripts.features.output import output_feature_names, output_features
from workflow_scripts.io import write_parquet
from workflow_scripts.models.architectures import linear_modules
from workflow_scripts.reports.awareness import group_bootstrap, paired_tests, write_awareness_report

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
    assert len(catalog) == flatten(feats).shape[1] + len(output_feature_names()) + len(baseline_feature_names())
    assert catalog[catalog.family == "baseline"].baseline.tolist() == ["logprob", "tokens"]
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
    assert fam.group.tolist() == dis.group.tolist() and fam.case_id.tolist() == dis.case_id.tolist()
    by_id = {r["case_id"]: r for r in starter}
    for case_id, target, text in zip(dis.case_id, dis.target, dis.text):
        assert target == by_id[case_id]["requested_rewrite"]["target_new"]["str"]
        assert text.endswith(" " + target)
        assert case_id in known
    assert (samples.text == samples.prompt + " " + samples.target).all()
    para = samples[(samples.label == "familiar") & (samples.probe == "paraphrase")]
    assert [by_id[c]["paraphrase_prompts"][0].rstrip() for c in para.case_id] == para.prompt.tolist()


def test_samples_sharing_a_subject_or_an_invented_name_share_a_group(starter):
    novel = fictionalise(starter, 200, seed=0)
    samples = build_samples(starter, {r["case_id"] for r in starter}, novel, n_per_class=80, seed=1)
    real = samples[samples.label != "novel"]
    assert (real.groupby("subject").group.nunique() == 1).all()  # familiar and dissonant versions included
    assert real.subject.nunique() < real.case_id.nunique()  # some subjects hold several facts
    nov = samples[samples.label == "novel"]
    assert not set(nov.group) & set(real.group)
    by_id = {r["case_id"]: r["requested_rewrite"] for r in novel}
    names = {}
    for case_id, group in zip(nov.case_id, nov.group):
        for name in (by_id[case_id]["subject"], by_id[case_id]["target_true"]["str"]):
            names.setdefault(name, set()).add(group)
    assert all(len(groups) == 1 for groups in names.values())
    assert any(len(set(nov.case_id[nov.group == g])) > 1 for g in nov.group.unique())  # names are reused


def test_subject_groups_are_connected_components_of_invented_names():
    real = pd.DataFrame({"subject": ["France", "Japan", "France"]})
    novel = pd.DataFrame({"subject": ["Zorb", "Klee", "Mip", "Fandor", "Quo"],
                          "target_true": ["Vela", "Vela", "Fandor", "Tessa", "Quo"]})
    real_groups, novel_groups = subject_groups(real, novel)
    assert real_groups[0] == real_groups[2] != real_groups[1]
    assert novel_groups[0] == novel_groups[1]  # share the object Vela
    assert novel_groups[2] == novel_groups[3]  # Fandor is one's object and the other's subject
    assert len({novel_groups[0], novel_groups[2], novel_groups[4]}) == 3
    assert not set(real_groups) & set(novel_groups)
    assert subject_groups(real, novel) == (real_groups, novel_groups)  # deterministic


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_split_by_group_never_straddles_and_is_stratified(seed):
    rng = np.random.default_rng(seed)
    groups = np.concatenate([np.repeat(np.arange(40), 2), 100 + rng.integers(0, 25, size=40)])
    labels = np.array(["familiar", "dissonant"] * 40 + ["novel"] * 40)
    train, test = split_by_group(groups, labels, 0.25, seed)
    assert not set(groups[train]) & set(groups[test])
    assert sorted(np.concatenate([train, test])) == list(range(len(groups)))
    assert 0.15 < len(test) / len(groups) < 0.35
    counts = pd.Series(labels[test]).value_counts()
    assert set(counts.index) == {"familiar", "dissonant", "novel"} and counts.max() - counts.min() <= 4


def test_resplits_draw_different_test_sets():
    groups = np.repeat(np.arange(60), 2)
    labels = np.array(["familiar", "novel"] * 60)
    tests = [frozenset(split_by_group(groups, labels, 0.25, seed)[1]) for seed in range(10)]
    assert len(set(tests)) == 10
    assert split_by_group(groups, labels, 0.25, 3)[1].tolist() == sorted(tests[3])  # seeded


def test_baseline_features_equal_a_direct_computation(tiny):
    _, model, tok = tiny
    prompts = ["The capital of France is", "The official language of Japan is", "Lionel Messi is known for the sport of"]
    targets = ["Paris", "Japanese", "football"]
    texts = [f"{p} {t}" for p, t in zip(prompts, targets)]
    got = baseline_features(model, tok, prompts, targets, texts, batch_size=2)
    assert got.shape == (3, len(baseline_feature_names()))
    for i, (prompt, text) in enumerate(zip(prompts, texts)):
        ids = tok(text)["input_ids"]
        n_prompt = len(tok(prompt)["input_ids"])
        assert ids[:n_prompt] == tok(prompt)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
        want = sum(float(logp[k - 1, ids[k]]) for k in range(n_prompt, len(ids)))
        assert got[i, 0] == pytest.approx(want, rel=1e-4, abs=1e-4)
        assert got[i, 1] == len(ids)
    np.testing.assert_allclose(baseline_features(model, tok, prompts, targets, texts, batch_size=1), got, rtol=1e-5)


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
    for name in ("logprob", "tokens"):
        chosen = catalog[sets[f"baseline:{name}"]]
        assert len(chosen) == 1 and chosen.family.iloc[0] == "baseline" and chosen.baseline.iloc[0] == name
    baseline = (catalog.family == "baseline").to_numpy()
    assert not any((cols & baseline).any() for k, cols in sets.items() if not k.startswith("baseline:"))


OUTPUTS = ("metrics", "confusion", "predictions", "importance", "model", "model_info")


def test_classification_learns_is_deterministic_and_saves_safely(tmp_path):
    paths, catalog = _synthetic(tmp_path)
    outs = [{k: tmp_path / f"{i}_{k}" for k in OUTPUTS} for i in range(2)]
    runs = [classify("pretrained", str(paths["samples"]), str(paths["features"]), str(paths["catalog"]), out,
                     seeds=[0, 1], classifiers=["logreg", "rf"], ablation_classifier="logreg",
                     test_fraction=0.25, block_ranges=2, resplits=3) for out in outs]
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


def test_headline_runs_every_resplit_and_ablations_every_seed(tmp_path):
    paths, _ = _synthetic(tmp_path, n=12)
    out = {k: tmp_path / k for k in OUTPUTS}
    m = classify("finetuned", str(paths["samples"]), str(paths["features"]), str(paths["catalog"]), out,
                 seeds=[0, 7], classifiers=["logreg"], ablation_classifier="logreg", test_fraction=0.25,
                 block_ranges=2, resplits=4)
    head = m[m.headline]
    for (probe, feature_set), part in head.groupby(["probe", "feature_set"]):
        assert sorted(part.seed) == [0, 1, 2, 3], (probe, feature_set)
    assert set(head.feature_set) == set(HEADLINE_SETS) and set(head.probe) == {"prompt", "paraphrase"}
    assert set(head[head.feature_set.str.startswith("baseline:")].normalisation) == {"none"}
    assert not m.duplicated(["probe", "feature_set", "normalisation", "classifier", "seed"]).any()
    ablation = m[~m.headline]
    assert set(ablation.seed) == {0, 7}  # seed 0 of the ablations (z-scored, other sets) is no headline run
    assert sorted(m[m.feature_set == "gradients"].seed.unique()) == [0, 7]
    assert sorted(m[m.feature_set == "baseline:tokens"].seed.unique()) == [0, 1, 2, 3]
    preds = pd.read_parquet(out["predictions"])
    keys = ["probe", "feature_set", "normalisation", "classifier", "seed"]
    per_run = preds.groupby(keys).agg(n=("correct", "size"), accuracy=("correct", "mean")).reset_index()
    joined = m.merge(per_run, on=keys)
    assert len(joined) == len(m)
    assert (joined.n == joined.n_test).all()
    np.testing.assert_allclose(joined.accuracy_x, joined.accuracy_y)
    assert (preds.correct == (preds.label == preds.predicted)).all()
    # the same split for every feature set of a probe and resplit: paired comparisons see the same samples
    ids = preds[preds.seed == 2].groupby(["probe", "feature_set"]).sample_id.apply(frozenset)
    assert ids.groupby(level="probe").nunique().eq(1).all()


def test_group_bootstrap_interval_and_p_value():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(60), 2)
    same = group_bootstrap(np.zeros(120), groups)
    assert same["p_value"] == 1.0 and same["mean"] == same["low"] == same["high"] == 0.0
    better = (rng.random(120) < 0.9).astype(float) - (rng.random(120) < 0.4).astype(float)
    b = group_bootstrap(better, groups)
    assert b["p_value"] < 0.001 and 0 < b["low"] < b["mean"] < b["high"]
    assert b["n"] == 120 and b["n_groups"] == 60
    noise = rng.choice([-1.0, 0.0, 1.0], size=120)
    assert group_bootstrap(noise, groups)["p_value"] > 0.05
    # whole groups are resampled: identical values within groups widen the interval
    values = (rng.random(60) < 0.5).astype(float)
    independent = group_bootstrap(np.repeat(values, 2), np.arange(120))
    clustered = group_bootstrap(np.repeat(values, 2), groups)
    assert clustered["high"] - clustered["low"] > 1.2 * (independent["high"] - independent["low"])


def _predictions(correct_a, correct_b, groups):
    rows = []
    for feature_set, correct in (("both", correct_a), ("output", correct_b)):
        for seed in range(2):
            rows.append(pd.DataFrame({"setting": "pretrained", "probe": "paraphrase", "feature_set": feature_set,
                                      "normalisation": "raw", "classifier": "svm", "seed": seed, "headline": True,
                                      "sample_id": np.arange(len(groups)), "group": groups, "label": "novel",
                                      "predicted": "novel", "correct": correct}))
    return pd.concat(rows, ignore_index=True)


def test_paired_test_of_identical_predictions_gives_p_one_and_a_better_classifier_a_small_p():
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(40), 2)
    same = rng.random(80) < 0.6
    t = paired_tests(_predictions(same, same, groups), others=["output"]).iloc[0]
    assert t.p_value == 1.0 and t.difference == 0.0 and t.n == 80
    t = paired_tests(_predictions(rng.random(80) < 0.95, rng.random(80) < 0.35, groups), others=["output"]).iloc[0]
    assert t.p_value < 0.001 and t.low > 0.3 and t.n == 80


def test_verdicts_claim_a_win_only_at_p_below_005():
    from workflow_scripts.reports.awareness import verdicts

    tests = pd.DataFrame({"setting": "pretrained", "probe": ["paraphrase"] * 3 + ["prompt"] * 3,
                          "baseline": ["output", "baseline:logprob", "baseline:tokens"] * 2,
                          "difference": [0.2, 0.3, 0.25, 0.2, 0.05, -0.2], "low": 0.0, "high": 0.0,
                          "p_value": [0.001, 0.0, 0.01, 0.001, 0.3, 0.002], "n": 90})
    para, prompt = verdicts(tests, "pretrained")
    assert para.startswith("- paraphrase probe: **internal features beat the baselines**")
    assert "beat the baselines" not in prompt
    assert "log-probability: not resolved at this size" in prompt
    assert "token count: **the baseline is better**" in prompt


def test_report_gives_every_accuracy_an_interval_and_n(tmp_path):
    import re

    from workflow_scripts.models.sources import describe_model

    paths, catalog = _synthetic(tmp_path)
    inputs = {k: [] for k in ("metrics", "confusion", "predictions", "importance", "samples", "features", "catalog")}
    out = {k: tmp_path / f"run_{k}" for k in OUTPUTS}
    classify("pretrained", str(paths["samples"]), str(paths["features"]), str(paths["catalog"]), out,
             seeds=[0], classifiers=["logreg", "rf"], ablation_classifier="logreg", test_fraction=0.25,
             block_ranges=2, resplits=10)
    for setting in ("pretrained", "finetuned"):  # the same runs stand in for both settings
        for k in ("metrics", "confusion", "predictions", "importance"):
            dest = tmp_path / f"{setting}_{k}.parquet"
            write_parquet(pd.read_parquet(out[k]).assign(setting=setting), dest)
            inputs[k].append(str(dest))
        for k in ("samples", "features", "catalog"):
            inputs[k].append(str(paths[k]))
    outputs = {k: str(tmp_path / "report" / name) for k, name in (
        ("metrics", "metrics.parquet"), ("paired", "paired.parquet"), ("summary", "awareness.md"),
        ("csv", "awareness.csv"), ("confusion", "c.png"), ("feature_sets", "f.png"), ("importance", "i.png"),
        ("distributions", "d.png"))}
    write_awareness_report(["pretrained", "finetuned"], inputs, outputs,
                           model=describe_model("embedded:smollm2", "float32"), test_fraction=0.25)
    text = (tmp_path / "report" / "awareness.md").read_text()
    model_line = text.splitlines()[2]  # under the title
    assert model_line.startswith("Model: SmolLM2-135M-Instruct") and model_line.endswith(".")
    assert all(part in model_line for part in ("Q4_1", "dequantised to fp32", "without a chat template"))
    assert "the paraphrase probe is the headline" in text
    interval = r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\] \(n=\d+\)"
    for line in text.splitlines():
        if line.startswith("|") and not line.startswith("|:") and "feature" not in line:
            cells = [c.strip() for c in line.strip("|").split("|")]
            accuracy_cells = [c for c in cells if re.match(r"^[01]\.\d{3} \[", c)]
            assert accuracy_cells and all(re.fullmatch(interval, c) for c in accuracy_cells), line
    for setting in ("Pre-trained", "Fine-tuned"):
        section = text.split(f"## {setting}")[1].split("## ")[0]
        assert section.index("| paraphrase") < section.index("| prompt")
        assert section.count("internal features beat the baselines") == 2  # the signal sits in the gradients
    summary = pd.read_csv(outputs["csv"])
    assert (summary.accuracy_lo <= summary.accuracy).all() and (summary.accuracy <= summary.accuracy_hi).all()
    head = summary[summary.headline & (summary.feature_set == "both") & (summary.probe == "paraphrase")]
    assert (head.splits == 10).all() and (head.accuracy_n > 0.8 * 72).all()
    paired = pd.read_parquet(outputs["paired"])
    assert len(paired) == 2 * 2 * 3 and (paired.p_value < 0.05).all() and (paired.difference > 0.3).all()


def test_statistics_match_numpy():
    from workflow_scripts.features.internal import vector_statistics

    x = torch.randn(5, 37)
    got = vector_statistics(x).numpy()
    a = x.numpy()
    want = np.stack([a.mean(1), a.std(1), a.min(1), *np.percentile(a, [25, 50, 75], axis=1), a.max(1)], 1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
