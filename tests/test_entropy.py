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
