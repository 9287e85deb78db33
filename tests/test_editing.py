"""ROME and MEMIT (workflow_scripts.editing): the algebra, the target optimisation, the statistics and
the registered methods, on the tiny random GPT-2 and llama models.

In random tiny models attention barely carries anything from the subject to later tokens, so the
tests that need an edit to *work* use prompts that end with the subject (the edit then acts on the
prediction directly) and a large clamp; the algebraic tests use ordinary fact prompts.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from workflow_scripts.editing.covariance import (covariance, covariance_key, load_covariance, save_covariance,
                                                 second_moments, weights_fingerprint)
from workflow_scripts.editing.hooks import capture
from workflow_scripts.editing.hparams import (MemitHParams, RomeHParams, TargetSettings, default_layers,
                                              default_rome_layer, parse_counts, parse_layers)
from workflow_scripts.editing.keys import subject_keys
from workflow_scripts.editing.memit import apply_memit, memit_delta
from workflow_scripts.editing.positions import encode_edit, subject_last_index
from workflow_scripts.editing.requests import EditRequest, requests_from_facts
from workflow_scripts.editing.rome import apply_rome
from workflow_scripts.editing.site import edit_site
from workflow_scripts.editing.targets import _Batch, _encode_all, optimise_targets
from workflow_scripts.editing.templates import fixed_templates, generate_templates
from workflow_scripts.editing.trace import causal_trace, choose_layers, efficacy_by_layer
from workflow_scripts.evaluation.exact_match import score_targets
from workflow_scripts.facts.schema import flat_facts
from workflow_scripts.models.loading import load_model

TEMPLATES = fixed_templates(["The old man said", "In the city"])
WORKS = TargetSettings(steps=30, lr=0.5, weight_decay=0.0, clamp=100.0)  # enough to move a tiny random model


@pytest.fixture(params=["gpt2", "llama"])
def fresh(request, tiny_model_dirs):
    """(family, model, tokenizer), loaded anew: editing changes weights in place."""
    model, tok = load_model(tiny_model_dirs[request.param])
    return request.param, model, tok


@pytest.fixture
def editors():
    """The registered editors."""
    from workflow_scripts.methods.registry import METHODS

    return {"rome": METHODS["rome"], "memit": METHODS["memit"]}


@pytest.fixture(scope="module")
def cov_texts(starter):
    from tests.conftest import record_texts

    return list(record_texts(starter))


def cov(model, tok, texts, layers=(0, 1), tokens=3000):
    return covariance(model, tok, layers, corpus="facts", tokens=tokens, max_len=64, texts=texts)


def fact_requests(starter, n=6, start=30, target="target_new"):
    return requests_from_facts(flat_facts(starter[start : start + n]), target)


def ending_at_subject(starter, n=6, start=30):
    """Requests whose prompt ends with the subject ("Meiji Shrine" -> "Berlin")."""
    return [EditRequest(r.prompt[: r.prompt.index(r.subject) + len(r.subject)], r.subject, r.target, r.case_id)
            for r in fact_requests(starter, n, start)]


# --- positions --------------------------------------------------------------------------------------


def test_the_subject_last_token_is_found_by_character_offsets(tiny_model_dirs):
    _, tok = load_model(tiny_model_dirs["llama"])

    def words(text):
        return tok.convert_ids_to_tokens(tok(text)["input_ids"])

    assert subject_last_index(tok, "France is a country", "France") == 0  # subject at position 0
    prompt = "The capital of United Kingdom is"
    assert words(prompt)[subject_last_index(tok, prompt, "United Kingdom")] == "Kingdom"
    # the subject ends inside a token: that token counts
    assert words("The capital of France is")[subject_last_index(tok, "The capital of France is", "Fran")] == "France"
    # a context prefix shifts the prompt; a subject inside the prefix is never chosen
    enc = encode_edit(tok, "France is in", "France", "Europe", template="France and Spain. {}")
    assert tok.convert_ids_to_tokens(enc.ids)[enc.subject_last] == "France" and enc.subject_last > 2
    assert tok.convert_ids_to_tokens(enc.ids)[enc.target_start:enc.target_end] == ["Europe"]
    with pytest.raises(ValueError, match="does not occur"):
        subject_last_index(tok, "The capital of Japan is", "France")


# --- the target vectors -----------------------------------------------------------------------------


@pytest.mark.parametrize("site", ["block", "mlp"])
def test_batched_and_one_at_a_time_target_optimisation_agree(fresh, starter, site):
    _, model, tok = fresh
    # Adam's first steps divide by |gradient| + 1e-8, so gradient entries near 1e-8 (common where a
    # random model barely reacts) turn float noise into visible differences: use prompts the edit acts on
    requests = ending_at_subject(starter, 4)
    hp = TargetSettings(steps=5, clamp=0.75 if site == "block" else 4.0)
    batched = optimise_targets(model, tok, requests, 0, site, hp, TEMPLATES)
    alone = torch.cat([optimise_targets(model, tok, [r], 0, site, hp, TEMPLATES).values for r in requests])
    assert float((batched.values - alone).norm() / alone.norm()) < 1e-5
    assert batched.updates.tolist() == [4] * 4  # steps - 1 updates when nothing converges


def test_replaying_the_upper_blocks_equals_a_hooked_forward_pass(fresh, starter):
    _, model, tok = fresh
    encoded = _encode_all(tok, fact_requests(starter, 3), TEMPLATES)
    delta = torch.randn(3, model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.n_embd)
    for site in ("block", "mlp"):
        fast = _Batch(model, 0, site, encoded, [0, 1, 2], 0, "cpu", replay=True)
        slow = _Batch(model, 0, site, encoded, [0, 1, 2], 0, "cpu", replay=False)
        norms = fast.init.norm(dim=-1) ** 2
        for a, b in zip(fast.losses(delta, norms, TargetSettings()), slow.losses(delta, norms, TargetSettings())):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# --- ROME -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["original", "homogeneous"])
def test_rome_maps_the_key_exactly_to_the_target_vector(fresh, starter, cov_texts, key):
    _, model, tok = fresh
    requests = fact_requests(starter, 1)
    c = cov(model, tok, cov_texts, layers=(0,))[0]
    site = edit_site(model, 0)
    before = site.matrix()
    result = apply_rome(model, tok, requests, RomeHParams(layer=0, key=key), c, TEMPLATES)
    k = result.key_bare[0] if key == "original" else result.key_mean[0]
    v = result.values[0].double()
    mapped = site.matrix() @ k.double()
    assert float((mapped - v).norm() / v.norm()) < 1e-5
    assert torch.linalg.matrix_rank(result.deltas[0]).item() == 1
    torch.testing.assert_close(site.matrix() - before, result.deltas[0], rtol=0, atol=1e-6)
    # the module itself now outputs v* for the bare prompt's key
    with torch.no_grad():
        out = site.module(k[None].to(site.weight.dtype))[0].double()
    assert float((out - v).norm() / v.norm()) < 1e-5


@pytest.mark.parametrize("method", ["rome", "memit"])
def test_an_edit_makes_the_new_target_the_argmax(fresh, starter, cov_texts, method):
    _, model, tok = fresh
    requests = ending_at_subject(starter, 4)
    prompts, targets = [r.prompt for r in requests], [r.target for r in requests]
    assert not score_targets(model, tok, prompts, targets).correct.any()
    covs = cov(model, tok, cov_texts, layers=(0,))
    if method == "rome":
        apply_rome(model, tok, requests, RomeHParams(layer=0, targets=WORKS), covs[0], TEMPLATES)
    else:
        apply_memit(model, tok, requests, MemitHParams(layers=(0,), targets=WORKS), covs, TEMPLATES,
                    calibration=fact_requests(starter, 16, 0, "target_true"))
    assert score_targets(model, tok, prompts, targets).correct.all()


# --- MEMIT ------------------------------------------------------------------------------------------


def test_frozen_and_sequential_memit_agree_on_the_first_layer_only(fresh, starter, cov_texts):
    _, model, tok = fresh
    requests = ending_at_subject(starter, 3)
    covs = cov(model, tok, cov_texts)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    hp = MemitHParams(layers=(0, 1), targets=TargetSettings(steps=6, clamp=4.0), lambda_=50.0)
    seq = apply_memit(model, tok, requests, hp, covs, TEMPLATES)
    model.load_state_dict(state)
    frozen = apply_memit(model, tok, requests, MemitHParams(layers=(0, 1), targets=hp.targets, lambda_=50.0,
                                                            mode="frozen"), covs, TEMPLATES)
    torch.testing.assert_close(seq.deltas[0], frozen.deltas[0], rtol=1e-6, atol=1e-9)
    assert not torch.allclose(seq.deltas[1], frozen.deltas[1], rtol=1e-3, atol=1e-6)
    # frozen: one residual from the unedited model, split R/(E-i); keys (d_k × n) per layer
    torch.testing.assert_close(frozen.resids[0] * 2, frozen.residual)
    torch.testing.assert_close(frozen.resids[1], frozen.residual)
    assert frozen.keys[1].shape == (edit_site(model, 1).key_width, 3)
    # and each frozen Δ is R_l K_lᵀ(λC_l + K_l K_lᵀ)⁻¹ of what it returns (what merges recombine)
    torch.testing.assert_close(frozen.deltas[1], memit_delta(frozen.keys[1], frozen.resids[1], covs[1], 50.0))


def test_memit_with_a_tiny_lambda_writes_the_residual_in_the_module_orientation(fresh, starter, cov_texts):
    family, model, tok = fresh
    site = edit_site(model, 0)
    assert site.transposed == (family == "gpt2")
    requests = fact_requests(starter, 1)
    k = subject_keys(model, tok, requests, [0], ["{}"])[1][0][0]  # the bare prompt's key
    r = torch.randn(site.out_width, dtype=torch.float64)
    c = cov(model, tok, cov_texts, layers=(0,))[0]
    with torch.no_grad():
        before = site.module(k[None])[0].double()
    site.apply(memit_delta(k[:, None].double(), r[:, None], c, 1e-6))
    with torch.no_grad():
        moved = site.module(k[None])[0].double() - before
    assert float((moved - r).norm() / r.norm()) < 1e-3


def test_lambda_auto_calibrates_the_median_s_to_its_target(fresh, starter, cov_texts):
    _, model, tok = fresh
    covs = cov(model, tok, cov_texts, layers=(0,))
    calibration = fact_requests(starter, 16, 0, "target_true")
    result = apply_memit(model, tok, fact_requests(starter, 2), MemitHParams(layers=(0,), targets=TargetSettings(steps=2),
                                                                              s_target=0.5),
                         covs, ["{}"], calibration=calibration, write=False)
    calib = result.stats["calibration"]["0"]
    assert math.isclose(calib["lambda"], calib["median_q"] / 0.5) and result.lambdas[0] == calib["lambda"]
    # on the calibration keys themselves, the median s is the target
    from workflow_scripts.editing.memit import quadratic_forms

    keys = subject_keys(model, tok, calibration, [0], ["{}"])[0][0]
    s = quadratic_forms(keys.T, covs[0]) / result.lambdas[0]
    assert math.isclose(float(s.median()), 0.5, rel_tol=1e-6)


# --- covariance -------------------------------------------------------------------------------------


def test_streamed_covariance_equals_a_direct_computation(fresh, cov_texts):
    _, model, tok = fresh
    texts = cov_texts[:120]
    streamed, count = second_moments(model, tok, [0, 1], texts, tokens=300, max_len=16, batch_size=3)
    rows = {0: [], 1: []}
    taken = 0
    for text in texts:  # every window alone, unpadded; the same first windows, the last cut at 300 tokens
        ids = tok(text)["input_ids"][:16][: 300 - taken]
        if not ids:
            continue
        taken += len(ids)
        t = torch.tensor([ids])
        got, _ = capture(model, t, None, torch.zeros(len(ids), dtype=torch.long), torch.arange(len(ids)),
                         inputs=[edit_site(model, 0).name, edit_site(model, 1).name])
        for layer in (0, 1):
            rows[layer].append(got[edit_site(model, layer).name].double())
        if taken >= 300:
            break
    assert count == taken == 300
    for layer in (0, 1):
        k = torch.cat(rows[layer])
        torch.testing.assert_close(streamed[layer], k.T @ k / len(k), rtol=1e-6, atol=1e-9)


def test_covariance_refuses_too_few_tokens(fresh, cov_texts):
    _, model, tok = fresh
    width = edit_site(model, 0).key_width
    with pytest.raises(ValueError, match=f"at least {width} tokens.*key width {width}.*tokens=100"):
        second_moments(model, tok, [0], cov_texts, tokens=100)
    with pytest.raises(ValueError, match=f"only 12 tokens.*at least {width}"):
        second_moments(model, tok, [0], ["one two three four five six seven eight nine ten eleven twelve"],
                       tokens=10_000)


def test_the_covariance_cache_is_keyed_by_the_weights_that_shape_the_keys(tiny_model_dirs, cov_texts, tmp_path):
    model, tok = load_model(tiny_model_dirs["llama"])
    other, _ = load_model(tiny_model_dirs["llama"])
    key = covariance_key(model, 0, "facts", 3000, 64)
    assert covariance_key(other, 0, "facts", 3000, 64) == key
    assert covariance_key(model, 0, "facts", 4000, 64) != key and covariance_key(model, 1, "facts", 3000, 64) != key
    with torch.no_grad():
        other.model.layers[1].mlp.down_proj.weight[3, 5] += 1e-3  # above layer 0: its keys cannot change
    assert covariance_key(other, 0, "facts", 3000, 64) == key
    assert covariance_key(other, 1, "facts", 3000, 64) != covariance_key(model, 1, "facts", 3000, 64)
    with torch.no_grad():
        other.model.layers[0].mlp.up_proj.weight[7, 2] += 1e-3  # one entry, in a layer-0 MLP weight
    assert covariance_key(other, 0, "facts", 3000, 64) != key
    assert weights_fingerprint(other) != weights_fingerprint(model)
    # the cache is read back bit for bit, and a saved file refuses another model's weights
    first = covariance(model, tok, [0, 1], "facts", 3000, 64, cache_dir=tmp_path, texts=cov_texts)
    assert len(list(tmp_path.glob("*.safetensors"))) == 2
    again = covariance(model, tok, [0, 1], "facts", 3000, 64, cache_dir=tmp_path, texts=[])
    assert all(torch.equal(first[k], again[k]) for k in first)
    save_covariance(tmp_path / "cov.safetensors", model, first, corpus="facts")
    loaded, meta = load_covariance(tmp_path / "cov.safetensors", model, [0, 1])
    assert all(torch.equal(first[k], loaded[k]) for k in first) and meta["corpus"] == "facts"
    with pytest.raises(ValueError, match="other weights"):
        load_covariance(tmp_path / "cov.safetensors", other, [0])


def test_the_wikipedia_reader_yields_prose():
    from workflow_scripts.editing.corpora import WIKI_FILE, gensim_test_file, wiki_articles

    try:
        gensim_test_file(WIKI_FILE)
    except FileNotFoundError:
        pytest.skip("gensim (which ships the Wikipedia sample as test data) is not installed")
    articles = list(wiki_articles())
    assert len(articles) >= 90
    titles = [t for t, _ in articles]
    assert titles[:3] == ["Anarchism", "Autism", "Albedo"]
    text = "\n".join(p for _, p in articles)
    assert len(text.split()) > 300_000
    for markup in ("{{", "}}", "[[", "]]", "<ref", "'''", "&quot;", "|-"):
        assert markup not in text, markup
    first = articles[0][1].split("\n")[0]
    assert first.startswith("Anarchism is a political philosophy") and first.endswith(".")


# --- templates, determinism, hyperparameters ---------------------------------------------------------


def test_reruns_are_deterministic(fresh, starter, cov_texts):
    _, model, tok = fresh
    templates = generate_templates(model, tok, ((5, 2),), seed=3)
    assert templates == generate_templates(model, tok, ((5, 2),), seed=3)
    assert templates[0] == "{}" and all(t.endswith(". {}") for t in templates[1:])
    assert templates[1:2] == generate_templates(model, tok, ((5, 1),), seed=3)[1:]  # more never changes earlier ones
    covs = cov(model, tok, cov_texts)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    hp = MemitHParams(layers=(0, 1), targets=TargetSettings(steps=4))
    calibration = fact_requests(starter, 8, 0, "target_true")
    runs = []
    for _ in range(2):
        model.load_state_dict(state)
        runs.append(apply_memit(model, tok, fact_requests(starter, 3), hp, covs, templates, calibration=calibration))
    assert all(torch.equal(runs[0].deltas[k], runs[1].deltas[k]) for k in (0, 1))


def test_layer_defaults_follow_the_reference_windows_scaled_to_depth():
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    def llama(n):
        return LlamaForCausalLM(LlamaConfig(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=n,
                                            num_attention_heads=2, num_key_value_heads=1))

    def gpt2(n):
        return GPT2LMHeadModel(GPT2Config(vocab_size=8, n_embd=8, n_layer=n, n_head=2))

    assert default_layers(llama(30)) == (4, 5, 6, 7, 8) and default_rome_layer(llama(30)) == 6
    assert default_layers(gpt2(12)) == (2, 3, 4, 5) and default_rome_layer(gpt2(12)) == 4
    assert default_layers(llama(2)) == (0,) and default_rome_layer(llama(2)) == 0
    assert default_layers(llama(4)) == (0, 1, 2)
    assert parse_layers("1-3", llama(30)) == (1, 2, 3) and parse_layers("5,2", llama(30)) == (2, 5)
    with pytest.raises(ValueError):
        parse_layers("29-31", llama(30))
    assert parse_counts("5x10+10x10") == ((5, 10), (10, 10)) and parse_counts("") == ()


# --- tracing and the layer sweep --------------------------------------------------------------------


def test_causal_tracing_restores_the_clean_run_at_the_last_block_and_token(fresh, starter):
    _, model, tok = fresh
    requests = fact_requests(starter, 2, 0, "target_true")
    table = causal_trace(model, tok, requests, samples=3)
    assert set(table.kind) >= {"subject_last", "last"}
    top = table[(table.layer == table.layer.max()) & (table.kind == "last")]
    assert (top.p_restored - top.p_clean).abs().max() < 1e-6  # the last block's output at the last token is all
    assert (table.effect == table.p_restored - table.p_corrupt).all()
    assert choose_layers(table, n_layers=2, width=2)["layers"] == (0,)
    mlp = causal_trace(model, tok, requests, site="mlp", window=3, samples=2, positions="key")
    assert set(mlp.kind) <= {"subject_first", "subject_middle", "subject_last", "last"}


def test_the_layer_sweep_reports_efficacy_per_layer(fresh, starter, cov_texts):
    _, model, tok = fresh
    requests = ending_at_subject(starter, 3)
    covs = cov(model, tok, cov_texts)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    table = efficacy_by_layer(model, tok, requests, [r.target for r in fact_requests(starter, 3, 30, "target_true")],
                              [0, 1], covs, TEMPLATES, WORKS)
    assert len(table) == 6 and set(table.layer) == {0, 1}
    assert table[table.layer == 0].exact.all()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # weights restored


# --- the registered methods -------------------------------------------------------------------------


@pytest.mark.parametrize("name,params", [("rome", {"steps": 3}), ("rome", {"steps": 3, "key": "homogeneous"}),
                                         ("memit", {"steps": 3}), ("memit", {"steps": 3, "mode": "frozen"})])
def test_registered_editors_change_only_their_edit_weights(fresh, editors, starter, cov_texts, tmp_path, name,
                                                           params):
    from workflow_scripts.methods.base import UpdateRequest

    _, model, tok = fresh
    method = editors[name]
    p = method.make_params(params)
    layers = method.edit_layers(model, p)
    save_covariance(tmp_path / "cov.safetensors", model, cov(model, tok, cov_texts, layers=layers))
    facts = flat_facts(starter[30:34])
    request = UpdateRequest(facts=facts, target="target_new", training={}, seed=0,
                            inputs={"covariance": str(tmp_path / "cov.safetensors"), "templates": TEMPLATES})
    before = {n: q.detach().clone() for n, q in model.named_parameters()}
    untouched = method.untouched(model, request, p)
    result = method.apply(model, tok, request, p)
    after = dict(result.model.named_parameters())
    assert set(result.delta) == {edit_site(model, layer).weight_name for layer in layers}
    for n, keep in untouched.items():
        assert keep is None and torch.equal(after[n].detach(), before[n]), n
    for n, d in result.delta.items():
        torch.testing.assert_close(after[n].detach() - before[n], d)
    assert {"arm", "epochs", "lr_ratio", "k", "k_fraction"} <= set(result.columns)
    assert result.columns["arm"] == {"original": "rome", "homogeneous": "rome_h", "sequential": "memit",
                                     "frozen": "memit_frozen"}[params.get("key", params.get("mode", "original" if name == "rome" else "sequential"))]
    numbers = {k: v for k, v in result.stats.items() if isinstance(v, float)}
    assert not any(math.isnan(v) for v in numbers.values()) and result.stats["edits"] == 4
    assert {"seconds", "epochs_run", "final_loss"} <= set(result.stats)
    assert pd.Series(result.stats).map(lambda v: isinstance(v, (int, float, str, bool))).all()


def test_sequential_editing_scores_old_earlier_and_latest_facts_after_every_batch(fresh, editors, starter, cov_texts):
    from workflow_scripts.editing.experiments import sequential_editing

    family, model, tok = fresh
    flat = flat_facts(starter[:22])
    old, stream = flat.iloc[:10].reset_index(drop=True), flat.iloc[10:22].reset_index(drop=True)
    m = editors["memit"]
    params = m.make_params({"steps": 3, "templates": ""})
    covs = cov(model, tok, cov_texts, layers=m.edit_layers(model, params))
    table = sequential_editing(model, tok, "memit", params, old, set(old.case_id[:6]), stream, "target_new", 5, covs)
    assert list(table.step) == [1, 2] and list(table.edits) == [5, 10]  # 12 facts: two full batches of 5
    assert list(table.retention_old_n) == [6, 6] and list(table.acc_edited_n) == [5, 10]
    assert list(table.acc_latest_n) == [5, 5] and list(table.acc_earlier_n) == [0, 5]
    assert math.isnan(table.acc_earlier.iloc[0]) and table.edit_seconds.is_monotonic_increasing
    for column in ("retention_old", "acc_edited", "acc_latest"):
        assert ((table[f"{column}_lo"] <= table[column]) & (table[column] <= table[f"{column}_hi"])).all()
    # the edited share is the count-weighted mix of the earlier and the latest batches
    last = table.iloc[1]
    assert last.acc_edited * 10 == pytest.approx(last.acc_earlier * 5 + last.acc_latest * 5)


def test_the_layer_experiment_traces_sweeps_and_writes_a_choice_the_config_can_read(fresh, starter, tmp_path):
    import json

    from workflow_scripts.editing.experiments import layer_experiment, trace_facts
    from workflow_scripts.reports.editing import write_layer_report

    family, model, tok = fresh
    flat = flat_facts(starter[:40])
    facts = trace_facts(flat, set(flat.case_id), 3, seed=0)
    assert facts.subject.is_unique and len(facts) == 3
    assert facts.case_id.tolist() == trace_facts(flat, set(flat.case_id), 3, seed=0).case_id.tolist()
    with pytest.raises(ValueError, match="needs 50 facts"):
        trace_facts(flat, set(flat.case_id), 50, seed=0)
    settings = {"cov_corpus": "gensim_wiki", "cov_tokens": 600, "cov_max_len": 32, "steps": 3, "lr": 1.0}
    with pytest.raises(ValueError, match="editable blocks"):
        layer_experiment(model, tok, facts, ["block"], 1, 3.0, 0, [99], settings)
    out = layer_experiment(model, tok, facts, ["block", "mlp"], 2, 3.0, 0, [0], settings)  # (2 blocks: 0 is editable)
    assert set(out["trace"].site) == {"block", "mlp"} and set(out["sweep"].layer) == {0}
    assert len(out["sweep"]) == 3 and out["choice"]["rome_layer"] == 0
    assert out["sweep"].paraphrase_beats_old.notna().sum() == facts.paraphrase_prompt.notna().sum()
    assert set(out["trace"][out["trace"].site == "mlp"].window) == {5}  # MLP outputs restored in windows
    path = tmp_path / "choice.json"
    path.write_text(json.dumps(out["choice"]))
    assert parse_layers(f"file:{path}", model) == parse_layers(out["choice"]["memit_layers"], model)
    with pytest.raises(ValueError, match="no such file"):
        parse_layers(f"file:{tmp_path / 'missing.json'}", model)
    write_layer_report(out, "tiny", str(tmp_path / "trace.png"), str(tmp_path / "layers.md"))
    assert (tmp_path / "trace.png").read_bytes()[:4] == b"\x89PNG"
    assert "Chosen:" in (tmp_path / "layers.md").read_text()
