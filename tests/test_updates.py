"""Every registered method through the one harness: the contract test, the evaluator, the statistics."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from workflow_scripts.evaluation import accuracy
from workflow_scripts.evaluation.evaluator import ACCURACIES, EvalSuite, evaluate, harmonic_mean, neighbourhood_table, prepare
from workflow_scripts.evaluation.stats import mcnemar_exact, paired_bootstrap, wilson
from workflow_scripts.facts.schema import flat_facts
from workflow_scripts.methods.base import UpdateRequest
from workflow_scripts.methods.registry import METHODS
from workflow_scripts.models.architectures import linear_modules
from workflow_scripts.models.loading import load_model
from workflow_scripts.training.plugins import LoraAdapters, StopAtAccuracy
from workflow_scripts.training.train import TrainConfig, train

TRAINING = {"lr": 3e-3, "batch_size": 5, "weight_decay": 0.1, "max_grad_norm": 1.0, "schedule": "constant",
            "warmup_steps": 0, "seed": 0, "precision": "fp32"}
FIXED_COLUMNS = {"arm", "epochs", "lr_ratio", "k", "k_fraction"}
# per method: a setting for the contract test (every strategy-dependent input provided below)
CONTRACT_SETTINGS = {"full": {"epochs": 2}, "lora": {"epochs": 2, "r": 4},
                     "neurons": {"epochs": 2, "strategy": "specific", "k": 0.1},
                     "rome": {"steps": 3, "cov_tokens": 2000}, "memit": {"steps": 3, "cov_tokens": 2000},
                     "merge": {"steps": 3, "cov_tokens": 2000, "rule": "ties", "clients": 3},
                     "resuscitate": {"epochs": 2, "ratio": 0.5, "q": 2.0},
                     "remix": {"epochs": 2, "mix": "random", "ratio": 1.0}}
LLAMA_ONLY = {"resuscitate"}  # needs a linear up projection (GPT-2's MLP has none): refused with a clear error


def test_every_registered_method_has_a_contract_setting():
    assert set(CONTRACT_SETTINGS) == set(METHODS)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_returns_a_model_a_clean_row_and_leaves_alone_what_it_declares(tiny_model_dirs, starter, family, name):
    model, tok = load_model(tiny_model_dirs[family])
    m = METHODS[name]
    params = m.make_params(CONTRACT_SETTINGS[name])
    flat = flat_facts(starter[:20])
    usage = {f"usage:{role}": {x.name: torch.rand(x.out_features, generator=torch.Generator().manual_seed(i))
                               for x in linear_modules(model)} for i, role in enumerate(("old", "new", "history"))}
    request = UpdateRequest(facts=flat.iloc[10:], target="target_new", training=TRAINING, seed=1,
                            inputs={k: usage[k] for k in m.needs(params) if k in usage})  # editors: C computed in the job
    if name in LLAMA_ONLY and family == "gpt2":
        with pytest.raises(ValueError, match="up projection"):
            m.apply(model, tok, request, params)
        return
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    untouched = m.untouched(model, request, params)
    result = m.apply(model, tok, request, params)
    assert result.model is not None and not any("lora_" in n for n, _ in result.model.named_parameters())
    after = dict(result.model.named_parameters())
    assert set(after) == set(before)
    for n, keep in untouched.items():
        if keep is None:
            assert torch.equal(after[n].detach(), before[n]), n
        else:
            assert torch.equal(after[n].detach()[keep], before[n][keep]), n
    assert result.delta, "the method changed nothing"
    for n, d in result.delta.items():
        torch.testing.assert_close(after[n].detach() - before[n], d)
    assert FIXED_COLUMNS <= set(result.columns)
    suite = EvalSuite(flat.iloc[:10], frozenset(flat.case_id[:5]), flat.iloc[10:], "target_new",
                      neighbourhood_table(starter[10:20], flat.case_id[10:]))
    row, outcomes = evaluate(result.model, tok, suite, state=prepare(model, tok, suite))
    numbers = {k: v for k, v in {**row, **result.stats}.items() if isinstance(v, float)}
    assert not any(math.isnan(v) for v in numbers.values()), numbers
    assert set(ACCURACIES) <= set(row)


def test_the_harness_writes_a_row_a_curve_and_per_item_outcomes(tmp_path, tiny_model_dirs, starter):
    from workflow_scripts.io import write_parquet
    from workflow_scripts.methods.run import run_update

    records = starter[:30]
    facts = tmp_path / "facts.parquet"
    from workflow_scripts.facts.schema import write_facts

    write_facts(records, facts)
    ids = [r["case_id"] for r in records]
    slices = pd.DataFrame({"case_id": ids, "slice": ["A"] * 10 + ["B"] * 10 + ["rest"] * 10})
    write_parquet(slices, tmp_path / "slices.parquet")
    write_parquet(pd.DataFrame({"case_id": ids[:10], "slice": "A", "correct": [True] * 6 + [False] * 4}),
                  tmp_path / "known.parquet")
    job = {"scenario": "nondissonant_update", "method": "neurons", "variant": "plastic_k0.2", "fold": 0, "seed": 0,
           "params": {"epochs": 3, "lr_ratio": 1.0, "strategy": "plastic", "k": 0.2, "usage_score": "abs_sum"},
           "curves": True}
    from workflow_scripts.training.usage import save_usage

    model, _ = load_model(tiny_model_dirs["llama"])
    save_usage({"all_real": {"abs_sum": {m.name: torch.rand(m.out_features) for m in linear_modules(model)}}}, tmp_path / "u.safetensors")
    inputs = {"model": str(tiny_model_dirs["llama"]), "facts": str(facts), "slices": str(tmp_path / "slices.parquet"),
              "known": str(tmp_path / "known.parquet"), "usage_old": str(tmp_path / "u.safetensors")}
    out = {k: tmp_path / f"{k}.parquet" for k in ("row", "curve", "outcomes")}
    row = run_update(job, inputs, TRAINING, out["row"], out["curve"], out["outcomes"])
    assert row["n_old"] == 10 and row["n_retained_base"] == 6 and row["n_new"] == 10
    assert row["arm"] == "plastic" and row["strategy"] == "plastic" and row["paper"] == "2.1"
    assert row["acc_new_lo"] <= row["acc_new"] <= row["acc_new_hi"]
    curve = pd.read_parquet(out["curve"])
    assert list(curve.epoch) == [0, 1, 2, 3]  # epoch 0: just before the update
    assert curve.acc_new.iloc[-1] == row["acc_new"]  # the last epoch's evaluation is the run's result
    assert curve.acc_new.iloc[0] == row["acc_new_before"]
    assert curve.retention_old.iloc[0] == row["retention_old_before"]
    assert curve.retention_old.iloc[-1] == row["retention_old"]  # the curve tracks the same known facts
    assert {c for c in curve.columns if c.startswith(("acc", "retention"))} == {
        f"{m}{s}" for m in ("retention_old", "acc_new") for s in ("", "_n", "_lo", "_hi")}
    learned = curve[(curve.epoch >= 1) & (curve.acc_new >= 0.9)]
    if len(learned):
        assert row["learned_epoch"] == learned.epoch.iloc[0]
        assert row["retention_at_learned"] == learned.retention_old.iloc[0]
    else:
        assert math.isnan(row["learned_epoch"])
    outcomes = pd.read_parquet(out["outcomes"])
    assert set(outcomes.metric) >= {"acc_old", "retention_old", "acc_new", "acc_gen", "locality"}
    assert (outcomes[outcomes.metric == "retention_old"].case_id.isin(ids[:6])).all()


def test_shared_start_scores_and_sparse_retention_curves_give_the_same_run(tmp_path, tiny_model_dirs, starter, monkeypatch):
    from workflow_scripts.facts.schema import write_facts
    from workflow_scripts.io import write_parquet
    from workflow_scripts.methods import run as harness
    from workflow_scripts.methods.run import read_start, run_update, score_start

    learned = 0.5  # (the tiny model learns these facts slowly; the rule is the same at 0.9)
    monkeypatch.setattr(harness, "LEARNED", learned)

    records = starter[:24]
    write_facts(records, tmp_path / "facts.parquet")
    ids = [r["case_id"] for r in records]
    write_parquet(pd.DataFrame({"case_id": ids, "slice": ["A"] * 12 + ["B"] * 8 + ["rest"] * 4}), tmp_path / "slices.parquet")
    write_parquet(pd.DataFrame({"case_id": ids[:12], "slice": "A", "correct": [True] * 12}), tmp_path / "known.parquet")
    inputs = {"model": str(tiny_model_dirs["gpt2"]), "facts": str(tmp_path / "facts.parquet"),
              "slices": str(tmp_path / "slices.parquet"), "known": str(tmp_path / "known.parquet")}
    job = {"scenario": "nondissonant_update", "method": "full", "variant": "default", "fold": 0, "seed": 0,
           "params": {"epochs": 20, "lr_ratio": 3.0}, "curves": True}
    training = {**TRAINING, "weight_decay": 0.0}

    def run(name, job, inputs):
        out = {k: tmp_path / f"{name}_{k}.parquet" for k in ("row", "curve", "outcomes")}
        return run_update(job, inputs, training, out["row"], out["curve"], out["outcomes"]), pd.read_parquet(out["curve"])

    every_epoch, dense = run("dense", {**job, "curve_every": 1}, inputs)
    score_start("nondissonant_update", inputs, str(tmp_path / "start.json"))
    before, state = read_start(str(tmp_path / "start.json"))
    assert before["retention_old"] == every_epoch["retention_old_before"] and state["locality"].dtype == np.int64
    shared, sparse = run("sparse", {**job, "curve_every": 3}, {**inputs, "start": str(tmp_path / "start.json")})
    for key in ("retention_old", "acc_new", "acc_gen", "locality", "acc_old_before", "learned_epoch", "retention_at_learned"):
        assert shared[key] == every_epoch[key] or (math.isnan(shared[key]) and math.isnan(every_epoch[key])), key
    assert list(dense.epoch) == list(range(21))
    first = next((e for e, a in zip(dense.epoch, dense.acc_new) if e >= 1 and a >= learned), None)
    assert first is not None and first % 3 != 0
    # acquisition after every epoch until learned, then every 2nd; retention every 2nd, the first learned, the last
    assert list(sparse.epoch) == [e for e in range(21) if e <= first or e % 3 == 0 or e == 20]
    assert set(sparse.epoch[sparse.retention_old.notna()]) == {e for e in range(21) if e % 3 == 0} | {20, first}
    for e in sparse.epoch:
        assert sparse.acc_new[sparse.epoch == e].item() == dense.acc_new[dense.epoch == e].item()
    measured = set(sparse.epoch[sparse.retention_old.notna()])
    for e in measured:
        assert sparse.retention_old[sparse.epoch == e].item() == dense.retention_old[dense.epoch == e].item()
    assert sparse.retention_old.iloc[-1] == shared["retention_old"] and sparse.acc_new.iloc[-1] == shared["acc_new"]


def test_lora_trains_only_adapters_and_merges_back(tiny_model_dirs, starter):
    model, tok = load_model(tiny_model_dirs["gpt2"])
    facts = flat_facts(starter[:12])
    prompts, targets = facts.prompt.tolist(), facts.target_true.tolist()
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, tok, prompts, targets, TrainConfig(lr=3e-3, epochs=100, batch_size=6),
          [StopAtAccuracy(tok, prompts, targets), LoraAdapters(8, 16, 0.0)])
    assert not any("lora_" in n for n, _ in model.named_parameters())
    assert accuracy(model, tok, prompts, targets) >= 0.9
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), base[n])}
    assert changed and all(n.endswith(".weight") and "attn" in n or "mlp" in n for n in changed)


def test_evaluator_counts_and_intervals(tiny_model_dirs, starter):
    model, tok = load_model(tiny_model_dirs["gpt2"])
    flat = flat_facts(starter[:30])
    old, new = flat.iloc[:15], flat.iloc[15:]
    prompts, targets = old.prompt.tolist(), old.target_true.tolist()
    train(model, tok, prompts, targets, TrainConfig(lr=3e-3, epochs=60, batch_size=8), [StopAtAccuracy(tok, prompts, targets)])
    suite = EvalSuite(old, frozenset(old.case_id[:10]), new, "target_true", neighbourhood_table(starter[15:30], new.case_id))
    state = prepare(model, tok, suite)
    row, outcomes = evaluate(model, tok, suite, state=state)
    assert row["acc_old"] == 1.0 and row["retention_old"] == 1.0 and row["acc_new"] < 0.5
    assert row["n_old"] == 15 and row["n_retained_base"] == 10 and row["n_new"] == 15
    assert row["locality"] == 1.0  # nothing changed since the reference was taken
    assert (row["acc_old_lo"], row["acc_old_hi"]) == pytest.approx(wilson(15, 15))
    assert len(outcomes[outcomes.metric == "acc_old"]) == 15
    assert 0 <= row["harmonic_mean"] <= 1


def test_harmonic_mean():
    assert harmonic_mean([1, 1, 1]) == 1
    assert harmonic_mean([0.5, 1.0, 1.0]) == pytest.approx(0.75)
    assert harmonic_mean([0.9, 0.0, 1.0]) == 0.0
    assert math.isnan(harmonic_mean([0.9, float("nan"), 1.0]))


def test_wilson_interval_matches_known_values():
    low, high = wilson(23, 24)
    assert (low, high) == pytest.approx((0.7976, 0.9926), abs=1e-4)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == 1.0
    assert all(math.isnan(x) for x in wilson(0, 0))


def test_exact_mcnemar_counts_only_discordant_pairs():
    a = [True] * 10 + [False] * 5
    b = [True] * 4 + [False] * 6 + [False] * 5
    test = mcnemar_exact(a, b)
    assert (test["only_a"], test["only_b"]) == (6, 0)
    assert test["p_value"] == pytest.approx(2 / 2**6)  # 2 * P(X <= 0), X ~ Bin(6, 1/2)
    assert mcnemar_exact(a, a)["p_value"] == 1.0
    assert mcnemar_exact([True, False], [False, True])["p_value"] == 1.0


def test_paired_bootstrap_finds_a_clear_difference_and_not_a_null_one():
    rng = np.random.default_rng(0)
    clear = paired_bootstrap([list(rng.normal(0.3, 0.1, 40)) for _ in range(3)], reps=500)
    assert clear["low"] > 0 and clear["p_value"] < 0.05
    null = paired_bootstrap([list(rng.normal(0.0, 1.0, 40)) for _ in range(3)], reps=500)
    assert null["low"] < 0 < null["high"]


def test_generation_metric_counts_target_mentions_and_scores_ngram_entropy(tiny_model_dirs, starter):
    from workflow_scripts.evaluation.evaluator import greedy_continuations, ngram_entropy

    h2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))  # bigrams of "a b a b": ab twice, ba once
    assert ngram_entropy("a b a b") == pytest.approx((2 / 3 * h2 + 4 / 3 * 1.0) / 2)
    assert ngram_entropy("same same same same same") == 0.0 and ngram_entropy("one") == 0.0
    model, tok = load_model(tiny_model_dirs["llama"])
    flat = flat_facts(starter[:12])
    suite = EvalSuite(flat.iloc[:4], frozenset(flat.case_id[:4]), flat.iloc[4:], "target_true")
    row, items = evaluate(model, tok, suite, ("exact_match", "generation"))
    n = int(flat.iloc[4:].generation_prompt.notna().sum())
    assert row["generation_mentions_n"] == n > 0 and 0 <= row["generation_mentions"] <= 1
    assert row["generation_entropy"] >= 0 and len(items[items.metric == "generation_mentions"]) == n
    texts = greedy_continuations(model, tok, flat.generation_prompt.iloc[4:8].tolist(), new_tokens=6, batch_size=3)
    alone = [greedy_continuations(model, tok, [p], new_tokens=6)[0] for p in flat.generation_prompt.iloc[4:8]]
    assert texts == alone  # left padding: a prompt continues the same in any batch


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_locality_reads_the_same_next_token_as_a_forward_pass_on_the_prompt_alone(tiny_model_dirs, starter, family):
    from workflow_scripts.evaluation.evaluator import next_token_predictions
    from workflow_scripts.models.encoding import pad_id, pad_right

    model, tok = load_model(tiny_model_dirs[family])
    nb = neighbourhood_table(starter[:30], [r["case_id"] for r in starter[:30]])
    scored = next_token_predictions(model, tok, nb.prompt, nb.target_true)
    encoded = [tok(p.rstrip())["input_ids"] for p in nb.prompt]
    ids, mask = pad_right(encoded, pad_id(tok))
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask.long(), use_cache=False).logits
    alone = logits[torch.arange(len(encoded)), torch.tensor([len(x) - 1 for x in encoded])].argmax(-1).numpy()
    assert len(nb) > 20 and (scored == alone).all()


def test_remix_mixes_exactly_ratio_times_the_facts_and_ratio_zero_is_full_fine_tuning(tiny_model_dirs, starter):
    facts = flat_facts(starter[:20]).iloc[:8]
    outcomes = {}
    for name, values in (("full", {"epochs": 2}), ("remix", {"epochs": 2, "ratio": 0.0}),
                         ("remix", {"epochs": 2, "mix": "arithmetic", "ratio": 1.5})):
        model, tok = load_model(tiny_model_dirs["llama"])
        m = METHODS[name]
        result = m.apply(model, tok, UpdateRequest(facts=facts, target="target_true", training=TRAINING, seed=2),
                         m.make_params(values))
        outcomes[(name, values.get("ratio"))] = (result, {n: p.detach().clone() for n, p in result.model.named_parameters()})
    plain, zero, mixed = outcomes[("full", None)], outcomes[("remix", 0.0)], outcomes[("remix", 1.5)]
    assert zero[0].columns["mix_rows"] == 0 and mixed[0].columns["mix_rows"] == 12
    assert all(torch.equal(plain[1][n], zero[1][n]) for n in plain[1])  # ratio 0 changes nothing
    assert not all(torch.equal(plain[1][n], mixed[1][n]) for n in plain[1])
    # 8 facts + 12 rows in batches of 5: twice the optimiser steps of the 8 facts alone
    assert (mixed[0].stats["train_rows"], mixed[0].stats["steps"], plain[0].stats["steps"]) == (20, 8, 4)
