"""Knowledge entropy (workflow_scripts.entropy): the entropy by hand, the coefficient hook against a
direct recomputation, padding, the paired bootstrap and resuscitation's exactness, on the tiny random
GPT-2 and llama models."""

from __future__ import annotations

import math

import pytest
import torch

from workflow_scripts.entropy.coefficients import (average_coefficients, coefficient_modules, encode_texts,
                                                   sequence_coefficients)
from workflow_scripts.entropy.entropy import (bootstrap_delta, bootstrap_total, entropy_from_cbar, entropy_table,
                                              normalised_entropy, total_entropy)
from workflow_scripts.entropy.resuscitate import resuscitate
from workflow_scripts.models.architectures import blocks, mlp_module_name, mlp_up_module_name
from workflow_scripts.models.hooks import Trace
from workflow_scripts.models.loading import load_model


@pytest.fixture(scope="module")
def texts(starter):
    """Twelve distinct fact texts of at least 5 tokens (prompts, paraphrases, neighbours)."""
    from tests.conftest import record_texts

    out = []
    for text in record_texts(starter):
        if len(text.split()) >= 5 and text not in out:
            out.append(text)
        if len(out) == 12:
            break
    return out


@pytest.fixture
def fresh_llama(tiny_model_dirs):
    """The tiny llama, loaded anew: resuscitation changes weights in place."""
    return load_model(tiny_model_dirs["llama"], device="cpu")


# --- entropy by hand ----------------------------------------------------------------------------


def test_entropy_of_a_hand_built_table_equals_the_hand_computation():
    # p = (1/4, 1/4, 1/2): H = 2 · (1/4) ln 4 + (1/2) ln 2 = 1.5 ln 2
    h = entropy_from_cbar([[1.0, 1.0, 2.0]])
    assert h.shape == (1,)
    assert float(h[0]) == pytest.approx(1.5 * math.log(2), abs=1e-12)
    assert float(h[0]) == pytest.approx(1.03972, abs=1e-5)


def test_a_uniform_layer_has_entropy_ln_m_and_normalised_entropy_one():
    for m in (2, 7, 1536):
        h = entropy_from_cbar(torch.full((1, m), 0.3))
        assert float(h[0]) == pytest.approx(math.log(m), rel=1e-12)
        assert float(normalised_entropy(h, m)[0]) == pytest.approx(1.0, rel=1e-12)


def test_a_one_hot_layer_has_zero_entropy():
    m = 50
    cbar = torch.zeros((1, m), dtype=torch.float64)
    cbar[0, 3] = 2.5
    assert abs(float(entropy_from_cbar(cbar)[0])) <= 1e-9 * m


def test_the_total_is_the_sum_of_the_layer_entropies():
    cbar = torch.rand((4, 9), generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 0.01
    per_layer = entropy_from_cbar(cbar)
    assert total_entropy(cbar) == pytest.approx(float(per_layer.sum()), rel=1e-14)
    for layer in range(4):
        assert float(per_layer[layer]) == pytest.approx(float(entropy_from_cbar(cbar[layer : layer + 1])[0]))


def test_entropy_is_scale_free_and_rejects_negative_or_all_zero_layers():
    cbar = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    assert float(entropy_from_cbar(cbar)[0]) == pytest.approx(float(entropy_from_cbar(cbar * 17)[0]), rel=1e-14)
    with pytest.raises(ValueError, match="negative"):
        entropy_from_cbar([[1.0, -1.0]])
    with pytest.raises(ValueError, match="sum to zero"):
        entropy_from_cbar([[1.0, 1.0], [0.0, 0.0]])


# --- the coefficient hook -----------------------------------------------------------------------


def test_the_hooked_coefficients_equal_a_direct_recomputation_from_the_mlp_input(tiny, texts):
    family, model, tok = tiny
    ids = torch.tensor([encode_texts(tok, texts[:1])[0]], device=next(model.parameters()).device)
    layers = range(len(blocks(model)))
    mlps = [mlp_module_name(model, layer) for layer in layers]
    names = coefficient_modules(model)
    with torch.no_grad(), Trace(model, mlps + names, retain_input=True, retain_output=False) as trace:
        model(input_ids=ids)
    for layer, mlp_name, name in zip(layers, mlps, names):
        mlp = model.get_submodule(mlp_name)
        h = trace.inputs[mlp_name]  # the hidden state entering the MLP (after the block's norm)
        with torch.no_grad():
            if family == "llama":
                expected = mlp.act_fn(mlp.gate_proj(h)) * mlp.up_proj(h)
            else:
                expected = mlp.act(mlp.c_fc(h))
        assert trace.inputs[name].shape == expected.shape
        torch.testing.assert_close(trace.inputs[name], expected, rtol=1e-5, atol=1e-6)

    # and the measurement is the token mean of |c| of exactly these coefficients
    measured = sequence_coefficients(model, tok, texts[:1])
    assert measured.values.dtype == torch.float64
    for layer, name in enumerate(names):
        direct = trace.inputs[name][0].abs().double().mean(dim=0).cpu()
        torch.testing.assert_close(measured.values[0, layer], direct, rtol=1e-5, atol=1e-8)


def test_a_text_alone_and_right_padded_in_a_batch_give_identical_paper_coefficients(tiny, texts):
    _, model, tok = tiny
    lengths = [len(ids) for ids in encode_texts(tok, texts)]
    short = min(range(len(texts)), key=lambda k: lengths[k])
    long = max(range(len(texts)), key=lambda k: lengths[k])
    assert lengths[short] < lengths[long]
    alone = sequence_coefficients(model, tok, [texts[short]])
    batched = sequence_coefficients(model, tok, [texts[long], texts[short]], batch_size=2)
    torch.testing.assert_close(batched.values[1], alone.values[0], rtol=1e-5, atol=1e-9)
    assert int(batched.n_tokens[1]) == lengths[short]

    # the seed's accounting sums the pads too, so the padded text's value changes with its batch
    code_alone = sequence_coefficients(model, tok, [texts[short]], mode="code")
    code_batched = sequence_coefficients(model, tok, [texts[long], texts[short]], mode="code", batch_size=2)
    assert not torch.allclose(code_batched.values[1], code_alone.values[0], rtol=1e-3)
    assert not torch.allclose(code_batched.cbar(), batched.cbar() * batched.n_tokens.double().mean(), rtol=1e-3)


def test_code_mode_is_paper_mode_times_the_length_for_equal_length_unpadded_texts(tiny, texts):
    _, model, tok = tiny
    width = min(len(ids) for ids in encode_texts(tok, texts))
    paper = sequence_coefficients(model, tok, texts, max_length=width, batch_size=4)
    code = sequence_coefficients(model, tok, texts, max_length=width, batch_size=4, mode="code")
    assert (paper.n_tokens == width).all()
    torch.testing.assert_close(code.cbar(), paper.cbar() * width, rtol=1e-5, atol=1e-9)
    # the scale cancels in the normalisation
    torch.testing.assert_close(entropy_from_cbar(code.cbar()), entropy_from_cbar(paper.cbar()), rtol=1e-9, atol=1e-9)


def test_the_coefficients_do_not_depend_on_batch_size_or_text_order(tiny, texts):
    _, model, tok = tiny
    texts = texts[:6]
    one = sequence_coefficients(model, tok, texts, batch_size=1)
    many = sequence_coefficients(model, tok, texts, batch_size=4)
    torch.testing.assert_close(many.values, one.values, rtol=1e-5, atol=1e-9)
    reversed_ = sequence_coefficients(model, tok, texts[::-1], batch_size=4)
    torch.testing.assert_close(reversed_.values.flip(0), one.values, rtol=1e-5, atol=1e-9)
    with pytest.raises(ValueError, match="mode"):
        sequence_coefficients(model, tok, texts, mode="tokens")


# --- table and bootstrap ------------------------------------------------------------------------


def test_the_entropy_table_has_one_row_per_layer_and_a_total_with_its_ci(tiny, texts):
    _, model, tok = tiny
    result = entropy_table(model, tok, texts, n_boot=200, seed=3)
    table = result.table
    assert list(table.columns) == ["layer", "module", "width", "H", "H_norm", "n_tokens"]
    assert table.layer.tolist() == list(range(len(blocks(model))))
    assert (table.H > 0).all() and (table.H_norm > 0).all() and (table.H_norm <= 1).all()
    assert table.H.tolist() == pytest.approx((table.H_norm * math.log(int(table.width[0]))).tolist())
    assert (table.n_tokens == int(result.coefficients.n_tokens.sum())).all()
    assert result.total.estimate == pytest.approx(float(table.H.sum()), rel=1e-12)
    # (a total's percentile interval is biased low, see the entropy module; no containment check)
    assert math.isfinite(result.total.low) and result.total.low < result.total.high
    assert result.total.high <= sum(math.log(int(w)) for w in table.width)
    again = bootstrap_total(result.coefficients, n_boot=200, seed=3)
    assert again == result.total  # seeded


def test_the_bootstrap_of_identical_checkpoints_gives_a_zero_width_delta_ci(tiny_model_dirs, texts):
    model_a, tok = load_model(tiny_model_dirs["llama"], device="cpu")
    model_b, _ = load_model(tiny_model_dirs["llama"], device="cpu")
    a = sequence_coefficients(model_a, tok, texts, batch_size=4)
    b = sequence_coefficients(model_b, tok, texts, batch_size=4)
    delta = bootstrap_delta(a, b, n_boot=300, seed=1)
    assert delta.estimate == 0.0
    assert delta.low == 0.0 and delta.high == 0.0


def test_the_paired_delta_of_a_resuscitated_checkpoint_is_positive_with_a_ci_above_zero(fresh_llama, texts):
    # amplifying the weakest neurons to twice the mean evens the layer out: entropy rises
    model, tok = fresh_llama
    before = sequence_coefficients(model, tok, texts, batch_size=4)
    resuscitate(model, before.cbar(), ratio=0.5, q=1.0)
    after = sequence_coefficients(model, tok, texts, batch_size=4)
    delta = bootstrap_delta(before, after, n_boot=300, seed=0)
    assert delta.estimate > 0
    assert delta.low <= delta.estimate <= delta.high
    assert delta.low > 0  # the paired CI excludes 0
    with pytest.raises(ValueError, match="same texts"):
        bootstrap_delta(before.values[:-1], after.values)


# --- resuscitation ------------------------------------------------------------------------------


def _up_weights(model) -> list[torch.Tensor]:
    return [model.get_submodule(mlp_up_module_name(model, layer)).weight.detach().clone()
            for layer in range(len(blocks(model)))]


def test_resuscitation_moves_the_selected_neurons_mean_coefficient_to_q_times_the_mean(fresh_llama, texts):
    model, tok = fresh_llama
    p, q = 0.5, 2.0
    cbar = average_coefficients(model, tok, texts, batch_size=4)
    params_before = {n: t.detach().clone() for n, t in model.state_dict().items()}
    report = resuscitate(model, cbar, ratio=p, q=q)
    after = average_coefficients(model, tok, texts, batch_size=4)

    # layer 0's input is unchanged, so its re-measured c̄ is exactly the prediction
    c0 = cbar[0]
    selected = c0 <= torch.quantile(c0, p)
    predicted = torch.where(selected, q * c0.mean(), c0)
    torch.testing.assert_close(after[0], predicted, rtol=1e-5, atol=0)
    assert report["layers"][0]["selected"] == int(selected.sum()) >= int(p * len(c0))
    assert report["clamped"] == 0
    assert report["selected"] == sum(entry["selected"] for entry in report["layers"])

    # only the selected rows of up_proj changed, by their factor
    changed = {n for n, t in model.state_dict().items() if not torch.equal(t, params_before[n])}
    ups = {mlp_up_module_name(model, layer) + ".weight" for layer in range(len(blocks(model)))}
    assert changed == ups
    for layer in range(len(blocks(model))):
        name = mlp_up_module_name(model, layer) + ".weight"
        sel = cbar[layer] <= torch.quantile(cbar[layer], p)
        old, new = params_before[name], model.state_dict()[name]
        assert torch.equal(new[~sel], old[~sel])
        factor = (q * cbar[layer].mean() / (cbar[layer][sel] + 1e-8)).float()
        torch.testing.assert_close(new[sel], old[sel] * factor[:, None], rtol=1e-6, atol=0)


def test_resuscitation_with_ratio_zero_changes_nothing(fresh_llama, texts):
    model, tok = fresh_llama
    cbar = average_coefficients(model, tok, texts, batch_size=4)
    before = {n: t.detach().clone() for n, t in model.state_dict().items()}
    report = resuscitate(model, cbar, ratio=0.0, q=2.0)
    assert report["selected"] == 0 and report["clamped"] == 0
    assert all(torch.equal(t, before[n]) for n, t in model.state_dict().items())


def test_a_zero_coefficient_neuron_gets_a_finite_clamped_factor(fresh_llama, texts):
    model, tok = fresh_llama
    cbar = average_coefficients(model, tok, texts, batch_size=4).clone()
    cbar[0, 5] = 0.0  # a dead neuron: the seed's factor would be infinite
    before = _up_weights(model)
    report = resuscitate(model, cbar, ratio=0.25, q=2.0, max_factor=100.0)
    after = _up_weights(model)
    assert all(torch.isfinite(w).all() for w in after)
    assert report["layers"][0]["clamped"] >= 1 and report["clamped"] >= 1
    assert report["layers"][0]["max_factor_applied"] == pytest.approx(100.0)
    torch.testing.assert_close(after[0][5], before[0][5] * 100.0)


def test_resuscitating_gpt2_raises_a_clear_error(tiny_model_dirs, texts):
    model, tok = load_model(tiny_model_dirs["gpt2"], device="cpu")
    cbar = average_coefficients(model, tok, texts[:2])
    with pytest.raises(ValueError, match="no linear up projection"):
        resuscitate(model, cbar, ratio=0.5, q=2.0)
    with pytest.raises(ValueError, match="no linear up projection"):
        mlp_up_module_name(model, 0)


def test_resuscitation_rejects_a_cbar_that_does_not_fit_the_model(fresh_llama):
    model, _ = fresh_llama
    with pytest.raises(ValueError, match="does not fit"):
        resuscitate(model, torch.ones((1, 3)), ratio=0.5)
    with pytest.raises(ValueError, match="ratio"):
        resuscitate(model, torch.ones((2, 128)), ratio=1.5)


def test_checkpoints_are_compared_on_the_same_texts_and_written_as_a_report(tiny_model_dirs, starter, tmp_path):
    from tests.conftest import record_texts
    from workflow_scripts.entropy.experiment import checkpoint_entropy, load_coefficients, write_entropy_report
    from workflow_scripts.entropy.resuscitate import resuscitate

    texts = list(record_texts(starter[:30]))[:6]
    resuscitated = tmp_path / "resuscitated"
    model, tok = load_model(tiny_model_dirs["llama"])
    table = checkpoint_entropy(str(tiny_model_dirs["llama"]), "base", texts, 32, 100, 0, str(tmp_path / "a.parquet"),
                               str(tmp_path / "a.safetensors"))
    resuscitate(model, load_coefficients(tmp_path / "a.safetensors").cbar(), ratio=0.5, q=3.0)
    model.save_pretrained(resuscitated)
    tok.save_pretrained(resuscitated)
    checkpoint_entropy(str(resuscitated), "resuscitated", texts, 32, 100, 0, str(tmp_path / "b.parquet"),
                       str(tmp_path / "b.safetensors"))
    assert table.H.sum() == pytest.approx(table.total.iloc[0])
    out = {"summary": str(tmp_path / "e.md"), "table": str(tmp_path / "e.csv"), "figure": str(tmp_path / "e.png")}
    summary = write_entropy_report([str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")],
                                   [str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")],
                                   ["base", "resuscitated"], "tiny llama", 100, 0, out)
    assert summary.delta_vs_base.iloc[0] == 0.0 and summary.delta_lo.iloc[0] == summary.delta_hi.iloc[0] == 0.0
    # raising the least-used neurons towards the mean spreads the coefficients: entropy goes up (6 texts
    # are too few for the interval to exclude 0 on this tiny model; the estimate lies inside it)
    r = summary.iloc[1]
    assert r.delta_vs_base > 0 and r.delta_lo <= r.delta_vs_base <= r.delta_hi
    assert "| resuscitated |" in open(out["summary"]).read()


# --- entropy arms: every update run's result measured ----------------------------------------------

ARM_SPEC = {"texts": 6, "max_tokens": 16, "bootstrap": 200, "seed": 0}


@pytest.fixture
def arm_files(tmp_path, tiny_model_dirs, starter, texts):
    """Facts, slices, known table, entropy texts and the tiny llama's start coefficients (a run's inputs)."""
    import pandas as pd

    from workflow_scripts.entropy.experiment import checkpoint_entropy
    from workflow_scripts.facts.schema import write_facts
    from workflow_scripts.io import write_parquet

    records = starter[:24]
    write_facts(records, tmp_path / "facts.parquet")
    ids = [r["case_id"] for r in records]
    write_parquet(pd.DataFrame({"case_id": ids, "slice": ["A"] * 12 + ["B"] * 8 + ["rest"] * 4}),
                  tmp_path / "slices.parquet")
    write_parquet(pd.DataFrame({"case_id": ids[:12], "slice": "A", "correct": [True] * 8 + [False] * 4}),
                  tmp_path / "known.parquet")
    arm_texts = texts[: ARM_SPEC["texts"]]
    write_parquet(pd.DataFrame({"text": arm_texts}), tmp_path / "texts.parquet")
    checkpoint_entropy(str(tiny_model_dirs["llama"]), "base", arm_texts, ARM_SPEC["max_tokens"], 50, 0,
                       str(tmp_path / "layers.parquet"), str(tmp_path / "start.safetensors"))
    return {"model": str(tiny_model_dirs["llama"]), "facts": str(tmp_path / "facts.parquet"),
            "slices": str(tmp_path / "slices.parquet"), "known": str(tmp_path / "known.parquet"),
            "entropy_texts": str(tmp_path / "texts.parquet"), "entropy_start": str(tmp_path / "start.safetensors")}


def _run(tmp_path, inputs, name, job, entropy):
    from workflow_scripts.methods.run import run_update

    out = {k: tmp_path / f"{name}_{k}.parquet" for k in ("row", "curve", "outcomes")}
    training = {"lr": 3e-3, "batch_size": 4, "weight_decay": 0.0, "max_grad_norm": 1.0, "schedule": "constant",
                "warmup_steps": 0, "seed": 0, "precision": "fp32"}
    return run_update(job, inputs, training, out["row"], out["curve"], out["outcomes"], entropy=entropy)


def test_an_unchanged_model_has_an_entropy_delta_of_exactly_zero_with_a_zero_width_interval(tiny_model_dirs, arm_files):
    from workflow_scripts.entropy.arms import ARM_COLUMNS
    from workflow_scripts.entropy.experiment import load_coefficients
    from workflow_scripts.methods.run import entropy_arm

    model, tok = load_model(tiny_model_dirs["llama"])
    model.train()  # a model left in training mode is measured in eval mode and handed back as it was
    columns = entropy_arm(model, tok, arm_files, ARM_SPEC)
    assert model.training
    assert set(columns) == set(ARM_COLUMNS)
    assert columns["entropy_delta"] == 0.0
    assert columns["entropy_delta_lo"] == 0.0 and columns["entropy_delta_hi"] == 0.0
    start = load_coefficients(arm_files["entropy_start"])
    assert columns["entropy"] == columns["entropy_start"] == pytest.approx(total_entropy(start.cbar()), abs=0)
    again = bootstrap_total(start, n_boot=ARM_SPEC["bootstrap"], seed=ARM_SPEC["seed"])
    assert (columns["entropy_lo"], columns["entropy_hi"]) == (again.low, again.high)
    assert columns["entropy_seconds"] > 0
    assert entropy_arm(model, tok, arm_files, {}) == {}  # arms off: no columns
    with pytest.raises(ValueError, match="entropy_start"):
        entropy_arm(model, tok, {**arm_files, "entropy_start": ""}, ARM_SPEC)


def test_an_update_run_gets_the_entropy_of_its_result_paired_with_its_start(tmp_path, arm_files):
    import pandas as pd

    from workflow_scripts.entropy.experiment import load_coefficients

    # a negligible learning rate: the result is the resuscitated start, whose ΔH is measured directly below
    job = {"scenario": "nondissonant_update", "method": "resuscitate", "variant": "default", "fold": 0, "seed": 0,
           "params": {"epochs": 1, "lr_ratio": 1e-9, "ratio": 0.5, "q": 2.0}, "curves": False}
    inputs = {**arm_files, "coefficients": arm_files["entropy_start"]}
    row = _run(tmp_path, inputs, "res", job, ARM_SPEC)
    written = pd.read_parquet(tmp_path / "res_row.parquet").iloc[0]
    for column in ("entropy", "entropy_lo", "entropy_hi", "entropy_start", "entropy_delta", "entropy_delta_lo",
                   "entropy_delta_hi", "entropy_seconds"):
        assert math.isfinite(written[column]) and written[column] == row[column], column
    assert row["entropy"] - row["entropy_start"] == pytest.approx(row["entropy_delta"], abs=1e-12)
    assert row["entropy_delta_lo"] <= row["entropy_delta"] <= row["entropy_delta_hi"]
    assert row["entropy_delta_lo"] < row["entropy_delta_hi"]  # the model changed: a real interval
    start = load_coefficients(arm_files["entropy_start"])
    model, tok = load_model(arm_files["model"])
    report = resuscitate(model, start.cbar(), ratio=0.5, q=2.0)
    texts = pd.read_parquet(arm_files["entropy_texts"]).text.tolist()
    direct = bootstrap_delta(start, sequence_coefficients(model, tok, texts, max_length=ARM_SPEC["max_tokens"]),
                             n_boot=ARM_SPEC["bootstrap"], seed=ARM_SPEC["seed"])
    assert row["resuscitated"] == report["selected"] > 0
    assert row["entropy_delta"] == pytest.approx(direct.estimate, rel=1e-5) and direct.estimate > 0
    assert row["entropy_delta_lo"] == pytest.approx(direct.low, rel=1e-5)
    assert row["entropy_delta_hi"] == pytest.approx(direct.high, rel=1e-5)
    assert row["entropy_start"] == pytest.approx(total_entropy(start.cbar()), abs=0)

    # arms off: the same run's row has no entropy column
    plain = _run(tmp_path, {k: v for k, v in inputs.items() if not k.startswith("entropy_")}, "plain", job, None)
    assert not any(k.startswith("entropy") for k in plain)
    assert plain["acc_new"] == row["acc_new"] and plain["retention_old"] == row["retention_old"]


def test_the_entropy_inputs_are_not_handed_to_the_method():
    from workflow_scripts.methods.run import method_inputs

    inputs = {"model": "m", "entropy_texts": "t.parquet", "entropy_start": "s.safetensors",
              "coefficients": "s.safetensors", "usage_old": "u.safetensors"}
    assert method_inputs(inputs) == {"coefficients": "s.safetensors", "usage:old": "u.safetensors"}


def test_the_body_only_forward_gives_the_same_coefficients_as_the_full_model_without_the_lm_head(tiny, texts,
                                                                                              monkeypatch):
    from workflow_scripts.entropy import coefficients as module

    _, model, tok = tiny
    head = model.get_output_embeddings()
    calls = []
    handle = head.register_forward_hook(lambda *args: calls.append(1))
    try:
        body = sequence_coefficients(model, tok, texts, batch_size=4, max_length=16)
        assert calls == []  # the LM head never ran
        monkeypatch.setattr(module, "body_and_head", lambda m: None)  # the whole model, logits included
        whole = sequence_coefficients(model, tok, texts, batch_size=4, max_length=16)
        assert len(calls) == 3  # 12 texts in batches of 4
    finally:
        handle.remove()
    assert torch.equal(body.values, whole.values) and torch.equal(body.n_tokens, whole.n_tokens)


# --- the start-checkpoint check, and correlations over runs ------------------------------------------


def test_entropy_arms_without_a_runs_start_checkpoint_raise_a_clear_error():
    from workflow_scripts.config import validate_config
    from workflow_scripts.scenarios.runs import build_runs, check_entropy_arms, run_inputs

    cfg = validate_config({"entropy": {"arms": True, "checkpoints": ["base", "fold0_A"]},
                           "updates": {"scenarios": {"nondissonant_update": {"methods": {"full": {}}},
                                                     "dissonant_update": {"methods": {"full": {}}}}}})
    runs = build_runs(cfg)
    with pytest.raises(ValueError, match=r"scenario dissonant_update .*'fold0_AB'.*entropy\.checkpoints"):
        check_entropy_arms(runs, cfg["entropy"]["checkpoints"])
    check_entropy_arms(runs, ["base", "fold0_A", "fold0_AB"])
    inputs = run_inputs(runs[("dissonant_update", "full", "default", 0)])
    assert inputs["entropy_texts"] == "entropy/texts.parquet"
    assert inputs["entropy_start"] == "entropy/fold0_AB/coefficients.safetensors"

    off = build_runs(validate_config({**cfg, "entropy": {**cfg["entropy"], "arms": False}}))
    check_entropy_arms(off, [])  # arms off: nothing required, no entropy inputs
    assert not any(k.startswith("entropy") for r in off.values() for k in run_inputs(r))


def test_a_perfect_line_has_r_one_and_rho_one_with_zero_width_intervals():
    from workflow_scripts.entropy.arms import pearson_fisher, relation, spearman_bootstrap

    x = [0.1, 0.4, 0.2, 0.9, 0.5, 0.3, 0.7, 0.8, 0.6, 1.0, 0.05, 0.15]
    y = [3 * v - 1 for v in x]
    p = pearson_fisher(x, y)
    assert p["n"] == 12 and p["r"] == pytest.approx(1.0) and p["r_lo"] == p["r_hi"] == p["r"]
    s = spearman_bootstrap(x, y, n_boot=100, seed=0)
    assert s["rho"] == pytest.approx(1.0) and s["rho_lo"] == pytest.approx(1.0) and s["rho_hi"] == pytest.approx(1.0)
    down = relation(x, [-v for v in x], n_boot=100)
    assert down["r"] == pytest.approx(-1.0) and down["rho"] == pytest.approx(-1.0)
    assert down["verdict"] == "both intervals exclude 0"


def test_the_fisher_interval_matches_the_hand_computation():
    from workflow_scripts.entropy.arms import pearson_fisher

    # x = 1..5, y = (1, 3, 2, 5, 4): Sxy = 8, Sxx = Syy = 10, r = 0.8; n = 5: se = 1/sqrt(2);
    # atanh 0.8 = 1.0986, 1.96 se = 1.3859: tanh(-0.2873) = -0.2796, tanh(2.4845) = 0.9862
    p = pearson_fisher([1, 2, 3, 4, 5], [1, 3, 2, 5, 4])
    assert p["r"] == pytest.approx(0.8, abs=1e-12)
    z, half = 0.5 * math.log(1.8 / 0.2), 1.959963984540054 / math.sqrt(2)
    assert p["r_lo"] == pytest.approx(math.tanh(z - half), abs=1e-9)
    assert p["r_hi"] == pytest.approx(math.tanh(z + half), abs=1e-9)
    assert p["r_lo"] == pytest.approx(-0.2796, abs=1e-4) and p["r_hi"] == pytest.approx(0.9862, abs=1e-4)
    assert math.isnan(pearson_fisher([1, 2, 3], [1, 2, 4])["r_lo"])  # n < 4: no interval
    assert pearson_fisher([1, 2, float("nan"), 4, 5, 6], [2, 1, 0, 4, 3, 6])["n"] == 5  # the NaN pair left out


def test_the_verdict_says_when_runs_are_too_few_or_an_interval_includes_zero():
    from workflow_scripts.entropy.arms import relation, verdict

    few = relation([1, 2, 3, 4, 5], [1, 3, 2, 5, 4], n_boot=200)
    assert few["verdict"] == "too few runs (n = 5 < 10) to establish a relation"
    noisy = relation(list(range(12)), [0, 5, 1, 4, 2, 3, 5, 0, 4, 1, 3, 2], n_boot=200)
    assert noisy["r_lo"] < 0 < noisy["r_hi"]
    assert noisy["verdict"] == "an interval includes 0 (or is undefined): no relation established"
    assert verdict({"n": 12, "r_lo": 0.2, "r_hi": 0.9, "rho_lo": 0.1, "rho_hi": 0.8}) == "both intervals exclude 0"


def _fake_runs(tmp_path):
    """Three runs of one scenario (full, two resuscitations) with rows and per-item outcomes: full learns
    all 10 new facts; resuscitation q1 learns the first 4, q2 all 10; all keep 8 of 8 old ones."""
    import pandas as pd

    from workflow_scripts.evaluation.stats import wilson

    rows, items = [], []
    for method, variant, learned, delta in (("full", "default", 10, -0.01), ("resuscitate", "q1", 4, 0.5),
                                            ("resuscitate", "default", 10, 0.9)):
        key = {"scenario": "nondissonant_update", "method": method, "variant": variant, "fold": 0}
        row = {**key, "arm": method, "epochs": 10, "lr": 1e-4, "batch_size": 8,
               "entropy": 100 + delta, "entropy_lo": 99.0, "entropy_hi": 101.0, "entropy_start": 100.0,
               "entropy_delta": delta, "entropy_delta_lo": delta - 0.1, "entropy_delta_hi": delta + 0.1,
               "entropy_seconds": 1.0}
        for metric, k, n in (("acc_new", learned, 10), ("retention_old", 8, 8)):
            low, high = wilson(k, n)
            row.update({metric: k / n, f"{metric}_n": n, f"{metric}_lo": low, f"{metric}_hi": high})
            items += [{**key, "metric": metric, "case_id": i, "item": "prompt", "correct": i < k} for i in range(n)]
        if method == "resuscitate":
            row.update(resuscitated=96.0, clamped=1.0)
        rows.append(row)
    paths = {}
    for name, frame in (("rows", pd.DataFrame(rows)), ("outcomes", pd.DataFrame(items))):
        paths[name] = []
        for k, (_, part) in enumerate(frame.groupby(["method", "variant"], sort=False)):
            path = tmp_path / f"{name}{k}.parquet"
            part.to_parquet(path)
            paths[name].append(str(path))
    return pd.DataFrame(rows), pd.DataFrame(items), paths


def test_the_resuscitation_table_sets_each_run_after_full_with_exact_mcnemar_p_values(tmp_path):
    from workflow_scripts.entropy.arms import resuscitation_table

    rows, items, _ = _fake_runs(tmp_path)
    table = resuscitation_table(rows, items)
    assert table.variant.tolist() == ["default", "q1", "default"] and table.control.tolist() == [True, False, False]
    assert table.method.tolist() == ["full", "resuscitate", "resuscitate"]
    # q1 misses 6 facts full learned, gains none: p = 2 · (1/2)^6
    assert table.acc_new_p_vs_full.iloc[1] == pytest.approx(2 / 2**6)
    assert table.acc_new_p_vs_full.iloc[2] == 1.0 and table.retention_old_p_vs_full.iloc[1] == 1.0
    assert math.isnan(table.acc_new_p_vs_full.iloc[0])
    assert table.acc_new_n.tolist() == [10, 10, 10] and table.resuscitated.iloc[1] == 96
    assert table.entropy_delta.tolist() == [-0.01, 0.5, 0.9]


def test_the_entropy_report_with_arms_writes_the_run_table_correlations_figure_and_resuscitation(
        tmp_path, tiny_model_dirs, texts):
    import pandas as pd

    from workflow_scripts.entropy.experiment import checkpoint_entropy, write_entropy_report

    _, _, paths = _fake_runs(tmp_path)
    checkpoint_entropy(str(tiny_model_dirs["llama"]), "base", texts[:4], 16, 50, 0, str(tmp_path / "a.parquet"),
                       str(tmp_path / "a.safetensors"))
    out = {k: str(tmp_path / f"{k}.{ext}") for k, ext in (("summary", "md"), ("table", "csv"), ("figure", "png"),
                                                          ("runs", "csv"), ("correlations", "csv"),
                                                          ("vs_updates", "png"), ("resuscitation", "csv"))}
    write_entropy_report([str(tmp_path / "a.parquet")], [str(tmp_path / "a.safetensors")], ["base"], "tiny llama",
                         50, 0, out, rows=paths["rows"], outcomes=paths["outcomes"])
    runs = pd.read_csv(out["runs"])
    assert len(runs) == 3 and runs.acc_new_n.tolist() == [10, 10, 10]
    stats = pd.read_csv(out["correlations"])
    assert stats.runs.tolist() == ["all runs", "all runs", "without resuscitate", "without resuscitate"]
    assert stats.n.tolist() == [3, 3, 1, 1]
    assert (stats.verdict.str.startswith("too few runs")).all()
    assert len(pd.read_csv(out["resuscitation"])) == 3
    text = open(out["summary"]).read()
    assert "too few runs (n = 3 < 10) to establish a relation" in text
    assert "| nondissonant_update | 0 | resuscitate | q1 | 0.40 [0.17, 0.69] (n = 10) | 0.0312 |" in text
    assert open(out["vs_updates"], "rb").read(4) == b"\x89PNG"


def test_the_shared_bootstrap_equals_the_separate_total_and_delta_bootstraps():
    from workflow_scripts.entropy.coefficients import SequenceCoefficients
    from workflow_scripts.entropy.entropy import bootstrap_after_and_delta

    g = torch.Generator().manual_seed(0)
    values = torch.rand((7, 3, 11), generator=g, dtype=torch.float64) + 0.01
    n_tokens = torch.full((7,), 5)
    before = SequenceCoefficients(values, n_tokens, ("a", "b", "c"), "paper")
    after = SequenceCoefficients(values * torch.rand((1, 3, 11), generator=g, dtype=torch.float64), n_tokens,
                                 ("a", "b", "c"), "paper")
    total, delta = bootstrap_after_and_delta(before, after, n_boot=150, seed=4)
    assert total == bootstrap_total(after, n_boot=150, seed=4)
    assert delta == bootstrap_delta(before, after, n_boot=150, seed=4)
    with pytest.raises(ValueError, match="same tokens"):
        bootstrap_after_and_delta(before, SequenceCoefficients(values, n_tokens + 1, ("a", "b", "c"), "paper"))
