"""Merging clients' MEMIT edits (workflow_scripts.merging): the algebra on random float64 matrices, then
frozen MEMIT's per-fact statistics on the tiny GPT-2 and llama models, single and multi-round."""

from __future__ import annotations

import pytest
import torch

from workflow_scripts.editing.covariance import covariance, weights_fingerprint
from workflow_scripts.editing.hparams import MemitHParams, TargetSettings
from workflow_scripts.editing.memit import apply_memit
from workflow_scripts.editing.requests import EditRequest, requests_from_facts
from workflow_scripts.editing.templates import fixed_templates
from workflow_scripts.facts.schema import flat_facts
from workflow_scripts.merging.clients import (apply_deltas, edit_statistics, load_statistics, merged_deltas,
                                              residual_shares, save_statistics, split_clients)
from workflow_scripts.merging.merges import (RULES, client_delta, collabedit, disjoint_mean, elect_sign, global_delta,
                                             gram, merge, simple_average, task_arithmetic, ties, trim)
from workflow_scripts.merging.rounds import CovarianceState, round_plan, run_rounds
from workflow_scripts.models.loading import load_model

TEMPLATES = fixed_templates(["The old man said", "In the city"])
FAST = TargetSettings(steps=4, clamp=4.0)


def random_clients(seed=0, d=16, d_out=12, sizes=(1, 2, 5)):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    prior = a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)  # λC, symmetric positive definite
    keys = [torch.randn(d, n, generator=g, dtype=torch.float64) for n in sizes]
    resids = [torch.randn(d_out, n, generator=g, dtype=torch.float64) for n in sizes]
    return prior, keys, resids


# --- the algebra ------------------------------------------------------------------------------------


def test_collabedit_from_deltas_and_grams_equals_one_global_solve_to_1e_10():
    prior, keys, resids = random_clients()
    deltas = [client_delta(k, r, prior) for k, r in zip(keys, resids)]
    merged = collabedit(deltas, [gram(k) for k in keys], prior)
    reference = global_delta(keys, resids, prior)
    assert float((merged - reference).abs().max()) <= 1e-10 * float(reference.abs().max())
    # and GLOBAL is R Kᵀ (P + K Kᵀ)⁻¹ written out
    k, r = torch.cat(keys, 1), torch.cat(resids, 1)
    torch.testing.assert_close(reference, r @ k.T @ torch.linalg.inv(prior + k @ k.T), rtol=1e-9, atol=1e-12)


def test_with_one_client_every_rule_returns_that_clients_delta():
    prior, keys, resids = random_clients(sizes=(3,))
    alone = client_delta(keys[0], resids[0], prior)
    for rule in ("global", "sa", "ta", "collabedit"):
        torch.testing.assert_close(merge(rule, keys, resids, prior), alone, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(merge("ties", keys, resids, prior, {"ties_keep": 1.0, "ties_scale": 1.0}), alone)


def test_simple_average_and_task_arithmetic_scale_the_sum_of_client_deltas():
    prior, keys, resids = random_clients()
    deltas = [client_delta(k, r, prior) for k, r in zip(keys, resids)]
    torch.testing.assert_close(simple_average(deltas) * 3, sum(deltas))  # divided by N = 3, not by 10
    torch.testing.assert_close(task_arithmetic(deltas, 0.5), 0.5 * sum(deltas))


def test_ties_trims_elects_signs_and_averages_the_agreeing_clients_by_hand():
    d1 = torch.tensor([[4.0, -1.0, 0.5, 2.0], [0.0, 3.0, -6.0, 0.1], [1.0, 0.0, 0.0, -2.0]], dtype=torch.float64)
    d2 = torch.tensor([[-5.0, 2.0, 0.0, 0.9], [0.2, -1.0, -3.0, 0.0], [0.0, 4.0, 0.3, -0.8]], dtype=torch.float64)
    d3 = torch.tensor([[3.0, 0.0, -0.4, -2.5], [0.0, 2.0, 1.0, 0.0], [0.0, -3.5, 0.0, 0.6]], dtype=torch.float64)
    # keep half of the 12 entries of each client (6 largest magnitudes)
    t1, t2, t3 = (trim(d, 0.5) for d in (d1, d2, d3))
    torch.testing.assert_close(t1, torch.tensor([[4.0, -1.0, 0, 2.0], [0, 3.0, -6.0, 0], [1.0, 0, 0, -2.0]],
                                                dtype=torch.float64))
    assert int((t2 != 0).sum()) == 6 and int((t3 != 0).sum()) == 6
    sign = elect_sign([t1, t2, t3])
    total = t1 + t2 + t3
    assert bool((sign[total != 0] == torch.sign(total[total != 0])).all())
    merged = disjoint_mean([t1, t2, t3], sign)
    # entry (0, 0): trimmed 4, -5, 3 -> sum 2 > 0 -> mean of 4 and 3
    assert float(merged[0, 0]) == pytest.approx(3.5)
    # entry (1, 2): -6, -3, 1 -> negative -> mean of -6 and -3
    assert float(merged[1, 2]) == pytest.approx(-4.5)
    out = ties([d1, d2, d3], keep=0.5, scale=0.4)
    torch.testing.assert_close(out, 0.4 * merged)
    # CollabEdit's code applied client 0's delta alone (bug B1): the merge must differ from it
    assert not torch.allclose(out, d1) and not torch.allclose(ties([d1, d2, d3], keep=1.0, scale=1.0), d1)


def test_ties_gives_zero_sums_the_majority_sign():
    a = torch.tensor([[1.0, 2.0, 3.0, -1.0]], dtype=torch.float64)
    b = torch.tensor([[1.0, 2.0, 3.0, 1.0]], dtype=torch.float64)
    sign = elect_sign([a, b])
    assert sign.tolist() == [[1.0, 1.0, 1.0, 1.0]]  # the last entry sums to 0: majority (+)
    assert disjoint_mean([a, b], sign).tolist() == [[1.0, 2.0, 3.0, 1.0]]


def test_merge_refuses_unknown_rules_and_mismatched_clients():
    prior, keys, resids = random_clients()
    with pytest.raises(ValueError, match="unknown merge rule"):
        merge("median", keys, resids, prior)
    with pytest.raises(ValueError, match="one key and one residual"):
        merge("global", keys, resids[:2], prior)
    with pytest.raises(ValueError, match="keep must be"):
        trim(keys[0], 0.0)
    assert set(RULES) == {"global", "sa", "ta", "ties", "collabedit"}


def test_clients_are_dealt_by_a_seeded_shuffle_into_near_equal_parts():
    parts = split_clients(range(10), 4, seed=3)
    assert sorted(len(p) for p in parts) == [2, 2, 3, 3]
    assert sorted(c for p in parts for c in p) == list(range(10))
    assert parts == split_clients(list(range(10)), 4, seed=3) and parts != split_clients(range(10), 4, seed=4)
    with pytest.raises(ValueError, match="at least 5 facts"):
        split_clients(range(4), 5)
    plan = round_plan(range(30), rounds=3, clients=2, per_client=4, seed=0)
    assert [len(c) for r in plan for c in r] == [4] * 6 and len({c for r in plan for p in r for c in p}) == 24
    with pytest.raises(ValueError, match="needs 24 facts"):
        round_plan(range(20), 3, 2, 4)


def test_the_state_adds_alpha_times_each_clients_gram():
    prior, keys, _ = random_clients()
    c = prior / 2.0
    for alpha, weight in ((0, 0.0), (1, 1.0), ("lambda", 2.0)):
        state = CovarianceState({0: c}, {0: 2.0}, alpha)
        before = state.p[0].clone()
        torch.testing.assert_close(before, prior)
        state.add({0: keys})
        torch.testing.assert_close(state.p[0] - before, weight * sum(k @ k.T for k in keys))


# --- on the tiny models -----------------------------------------------------------------------------


@pytest.fixture(params=["gpt2", "llama"])
def setting(request, tiny_model_dirs, starter):
    from tests.conftest import record_texts

    model, tok = load_model(tiny_model_dirs[request.param])
    layers = (0, 1)
    covs = covariance(model, tok, layers, corpus="facts", tokens=3000, max_len=64, texts=list(record_texts(starter)))
    facts = flat_facts(starter[40:49]).drop_duplicates("subject").iloc[:8].reset_index(drop=True)
    # prompts that end with the subject: in a random tiny model only these move the prediction enough for
    # the target optimisation to be deterministic to float precision whatever the batch (see test_editing)
    requests = [EditRequest(r.prompt[: r.prompt.index(r.subject) + len(r.subject)], r.subject, r.target, r.case_id)
                for r in requests_from_facts(facts, "target_new")]
    lambdas = {0: 40.0, 1: 60.0}
    stats = edit_statistics(model, tok, requests, layers, FAST, TEMPLATES, lambdas, weights_fingerprint(model, 1))
    return model, tok, covs, requests, lambdas, stats


def _logits(model, tok, prompts):
    batch = tok(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits.double()


def test_collabedit_of_three_clients_equals_frozen_memit_on_the_union(setting):
    model, tok, covs, requests, lambdas, stats = setting
    clients = [[r.case_id for r in requests[:2]], [r.case_id for r in requests[2:5]], [r.case_id for r in requests[5:]]]
    priors = {l: lambdas[l] * covs[l] for l in stats.layers}
    merged = merged_deltas(stats, clients, "collabedit", priors)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    union = [requests[i] for i in range(len(requests))]
    frozen = apply_memit(model, tok, union, MemitHParams(layers=stats.layers, targets=FAST, lambda_=1.0, mode="frozen"),
                         {l: lambdas[l] * covs[l] for l in stats.layers}, TEMPLATES, write=False)
    for layer in stats.layers:
        ref = frozen.deltas[layer]
        assert float((merged[layer] - ref).abs().max()) <= 1e-8 * float(ref.abs().max())
    prompts = [r.prompt for r in requests]
    apply_deltas(model, merged)
    ours = _logits(model, tok, prompts)
    model.load_state_dict(state)
    apply_deltas(model, frozen.deltas)
    theirs = _logits(model, tok, prompts)
    assert float((ours - theirs).abs().max()) <= 1e-5
    model.load_state_dict(state)


def test_each_client_solves_with_its_own_keys(setting):
    model, tok, covs, requests, lambdas, stats = setting
    a, b = [r.case_id for r in requests[:3]], [r.case_id for r in requests[3:6]]
    priors = {l: lambdas[l] * covs[l] for l in stats.layers}
    good = merged_deltas(stats, [a, b], "sa", priors)
    # swapping the two clients' keys (not their residuals) must change the result (bug B3a reused one client's keys)
    swapped = stats.subset(a + b)
    for layer in stats.layers:
        k = swapped.keys[layer]
        swapped.keys[layer] = torch.cat([k[:, 3:], k[:, :3]], 1)
    bad = merged_deltas(swapped, [a, b], "sa", priors)
    assert not torch.allclose(good[0], bad[0])
    # the residual split: R/(E - i) by default, R/E when asked
    shares = residual_shares(stats.residual, 2)
    torch.testing.assert_close(shares[0] * 2, stats.residual)
    torch.testing.assert_close(residual_shares(stats.residual, 2, "equal")[1] * 2, stats.residual)


@pytest.mark.parametrize("alpha", [0, 1, "lambda"])
def test_multi_round_collabedit_equals_global_each_round_and_the_state_grows_by_alpha(setting, alpha):
    model, tok, covs, requests, lambdas, stats = setting
    state = {k: v.clone() for k, v in model.state_dict().items()}
    by_case = {r.case_id: r for r in requests}
    ids = [r.case_id for r in requests[:6]]
    plan = [[ids[0:2], ids[2:3]], [ids[3:5], ids[5:6]]]
    outcome = {}
    for rule in ("collabedit", "global"):
        model.load_state_dict(state)
        records = run_rounds(model, tok, plan, by_case, rule, alpha, covs, lambdas, stats.layers, FAST, TEMPLATES,
                             first=stats)
        outcome[rule] = (records, _logits(model, tok, [r.prompt for r in requests]))
    records = outcome["collabedit"][0]
    assert [r["round"] for r in records] == [1, 2]
    assert all(r["max_rel_diff_vs_global"] <= 1e-8 for r in records)
    assert float((outcome["collabedit"][1] - outcome["global"][1]).abs().max()) <= 1e-5
    # the state: λC in round 1; after it, + α Σ S_i of round 1's keys
    assert records[0]["state_trace_ratio"] == pytest.approx(1.0)
    grams = sum(float(torch.trace(stats.subset(c).keys[l] @ stats.subset(c).keys[l].T)) for c in plan[0] for l in stats.layers)
    weight = {0: 0.0, 1: 1.0}.get(alpha)
    expected = (sum(lambdas[l] * float(torch.trace(covs[l])) for l in stats.layers)
                + (sum(lambdas[l] * float(torch.trace(stats.subset(plan[0][0] + plan[0][1]).keys[l]
                                                      @ stats.subset(plan[0][0] + plan[0][1]).keys[l].T))
                       for l in stats.layers) if alpha == "lambda" else weight * grams))
    assert records[1]["state_trace_ratio"] == pytest.approx(expected / sum(lambdas[l] * float(torch.trace(covs[l]))
                                                                           for l in stats.layers), rel=1e-9)
    model.load_state_dict(state)


def test_round_one_from_cached_statistics_equals_measuring_them_again(setting):
    model, tok, covs, requests, lambdas, stats = setting
    state = {k: v.clone() for k, v in model.state_dict().items()}
    by_case = {r.case_id: r for r in requests}
    plan = [[[requests[0].case_id], [requests[1].case_id, requests[2].case_id]]]
    run_rounds(model, tok, plan, by_case, "collabedit", 1, covs, lambdas, stats.layers, FAST, TEMPLATES, first=stats)
    cached = _logits(model, tok, [r.prompt for r in requests])
    model.load_state_dict(state)
    run_rounds(model, tok, plan, by_case, "collabedit", 1, covs, lambdas, stats.layers, FAST, TEMPLATES)
    assert float((cached - _logits(model, tok, [r.prompt for r in requests])).abs().max()) <= 1e-5
    model.load_state_dict(state)


def test_statistics_round_trip_through_safetensors_and_refuse_another_model(setting, tmp_path, tiny_model_dirs):
    model, tok, covs, requests, lambdas, stats = setting
    path = tmp_path / "stats.safetensors"
    save_statistics(stats, path, scenario="collaborative_edit")
    back = load_statistics(path, model)
    assert back.case_ids == stats.case_ids and back.layers == stats.layers and back.templates == stats.templates
    assert back.lambdas == stats.lambdas
    for layer in stats.layers:
        assert torch.equal(back.keys[layer], stats.keys[layer])
    assert torch.equal(back.residual, stats.residual)
    with torch.no_grad():
        model.get_input_embeddings().weight[0, 0] += 1.0
    with pytest.raises(ValueError, match="another model"):
        load_statistics(path, model)
    with torch.no_grad():
        model.get_input_embeddings().weight[0, 0] -= 1.0


def test_an_edit_submitted_by_two_clients_weighs_twice_in_the_global_solve(setting):
    from workflow_scripts.merging.clients import column_deltas

    model, tok, covs, requests, lambdas, stats = setting
    ids = [r.case_id for r in requests]
    parts = [ids[:3], ids[3:6], ids[6:]]
    priors = {l: lambdas[l] * covs[l] for l in stats.layers}
    repeated = [stats.columns(p) for p in (parts[0], parts[1] + parts[0], parts[2])]
    merged = column_deltas(stats, repeated, "global", priors)
    # duplicated columns = the repeated facts' keys and residuals scaled by sqrt(2) in one solve
    scaled = stats.subset(ids)
    for layer in stats.layers:
        scaled.keys[layer] = scaled.keys[layer].clone()
        scaled.keys[layer][:, :3] *= 2 ** 0.5
    scaled.residual = scaled.residual.clone()
    scaled.residual[:, :3] *= 2 ** 0.5
    reference = merged_deltas(scaled, [ids], "global", priors)
    collab = column_deltas(stats, repeated, "collabedit", priors)
    for layer in stats.layers:
        torch.testing.assert_close(merged[layer], reference[layer], rtol=1e-8, atol=1e-12)
        torch.testing.assert_close(collab[layer], reference[layer], rtol=1e-7, atol=1e-10)


def test_the_overlap_and_conflict_experiment_scores_every_rule_and_restores_the_model(setting, starter):
    from workflow_scripts.merging.challenges import challenges_experiment
    from workflow_scripts.methods.merging import MERGE

    model, tok, covs, requests, lambdas, stats = setting
    flat = flat_facts(starter)
    learn = flat[flat.case_id.isin(stats.case_ids)].reset_index(drop=True)
    learn = learn.assign(prompt=[next(r.prompt for r in requests if r.case_id == c) for c in learn.case_id])
    keep = flat.iloc[:5]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = challenges_experiment(model, tok, learn, flat, keep, stats, covs,
                                MERGE.make_params({"steps": 4, "clamp": 4.0}), clients=2, seed=0, conflict_facts=3,
                                overlap_rules=("global", "collabedit", "ta"), conflict_rules=("global", "ties"))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # every merge was undone
    ov = out[out.experiment == "overlap"]
    assert set(ov.rule) == {"global", "collabedit", "ta"} and set(ov.condition) == {"separate", "overlap"}
    for cond in ("separate", "overlap"):  # CollabEdit equals GLOBAL, with and without the repeat
        pair = [ov[(ov.rule == r) & (ov.condition == cond)].correct.tolist() for r in ("global", "collabedit")]
        assert pair[0] == pair[1]
    assert set(ov.group) == {"repeated", "other", "old"} and len(ov[ov.group == "repeated"].case_id.unique()) == 4
    det = out[out.experiment == "overlap_detection"]
    assert set(det.condition) == {"already written", "new"} and det.value.notna().all() and (det.value > 0).all()
    assert sorted(det.case_id) == sorted(stats.case_ids)  # half written, half new (whether a repeat shows is a finding)
    cf = out[out.experiment == "conflict"]
    assert set(cf.rule) == {"global", "ties"} and set(cf.measure) == {"exact_a", "exact_b", "a_beats_b"}
    assert cf.case_id.nunique() <= 3
    assert set(cf.condition) == {"conflict", "conflict, B augmented"}
