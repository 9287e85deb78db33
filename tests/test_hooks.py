"""The hook utility: what a trace captures equals what the model computes, and it leaves nothing behind."""

import pytest
import torch

from workflow_scripts.features.internal import internal_features
from workflow_scripts.models.architectures import blocks, linear_modules
from workflow_scripts.models.hooks import Trace, resolve_targets, trace_linear
from workflow_scripts.models.loading import load_model
from workflow_scripts.training.usage import UsageTracker

TEXTS = ["The capital of France is Paris", "The official language of Japan is Japanese"]


@pytest.fixture(params=["gpt2", "llama"])
def fresh(request, tiny_model_dirs):
    model, tok = load_model(tiny_model_dirs[request.param])
    model.eval()
    return model, tok


def encode(tok, texts=TEXTS):
    batch = tok(texts, return_tensors="pt", padding=True)
    return batch["input_ids"], batch["attention_mask"]


def hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def forward(model, tok, texts=TEXTS):
    ids, mask = encode(tok, texts)
    return model(input_ids=ids, attention_mask=mask)


def lm_loss(model, ids, mask):
    return model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss


def test_hooks_are_removed_when_the_trace_exits_even_on_error(fresh):
    model, tok = fresh
    before = hook_count(model)
    with trace_linear(model) as trace:
        assert hook_count(model) == before + len(linear_modules(model))
        forward(model, tok)
    assert hook_count(model) == before and trace.outputs
    with pytest.raises(RuntimeError, match="boom"):
        with trace_linear(model):
            raise RuntimeError("boom")
    assert hook_count(model) == before


def test_retained_inputs_and_outputs_are_what_each_module_computes(fresh):
    model, tok = fresh
    ids, mask = encode(tok)
    with trace_linear(model, retain_input=True) as trace:
        model(input_ids=ids, attention_mask=mask)
    assert list(trace.outputs) == [m.name for m in linear_modules(model)] == trace.names
    with torch.no_grad():
        for m in linear_modules(model):
            x, y = trace.inputs[m.name], trace.outputs[m.name]
            assert x.shape[:2] == y.shape[:2] == ids.shape and y.shape[-1] == m.out_features
            assert torch.equal(m.module(x), y), m.name
            assert not x.requires_grad and not y.requires_grad


def test_tracing_does_not_change_the_model_outputs(fresh):
    model, tok = fresh
    ids, mask = encode(tok)
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask).logits
        with trace_linear(model, retain_input=True, on_output=lambda n, o: None):
            traced = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(plain, traced)


def test_captured_output_gradient_equals_autograd(fresh):
    model, tok = fresh
    ids, mask = encode(tok)
    grads = {}
    with trace_linear(model, detach=False, on_output_grad=lambda n, g: grads.setdefault(n, g.clone())) as trace:
        loss = lm_loss(model, ids, mask)
        names = trace.names
        expected = torch.autograd.grad(loss, [trace.outputs[n] for n in names], retain_graph=True)
        grads.clear()  # autograd.grad runs the tensor hooks too; compare those of a plain backward
        loss.backward()
    assert sorted(grads) == sorted(names)
    for name, want in zip(names, expected):
        assert torch.allclose(grads[name], want, rtol=1e-6, atol=1e-9), name
        assert grads[name].abs().sum() > 0


def test_gradient_hooks_are_not_registered_when_the_output_needs_no_gradient(fresh):
    model, tok = fresh
    calls = []
    with torch.no_grad(), trace_linear(model, on_output_grad=lambda n, g: calls.append(n)) as trace:
        out = forward(model, tok).logits
    assert not out.requires_grad and not calls and len(trace.outputs) == len(linear_modules(model))


def test_gradient_callbacks_stay_silent_once_the_trace_has_exited(fresh):
    model, tok = fresh
    calls = []
    with trace_linear(model, retain_output=False, on_output_grad=lambda n, g: calls.append(n)) as trace:
        loss = lm_loss(model, *encode(tok))
    loss.backward()
    assert not calls
    with trace:  # entered again: the old graph's hooks belong to the earlier entry
        loss = lm_loss(model, *encode(tok))
        lm_loss(model, *encode(tok)).backward()
    assert len(calls) == len(linear_modules(model))


def test_select_keeps_only_the_chosen_positions(fresh):
    model, tok = fresh
    ids, mask = encode(tok)
    with torch.no_grad():
        with trace_linear(model) as full:
            model(input_ids=ids, attention_mask=mask)
        with trace_linear(model, retain_input=True, select=lambda t: t[:, -1], clone=True) as last:
            model(input_ids=ids, attention_mask=mask)
    for name, y in full.outputs.items():
        assert torch.equal(last.outputs[name], y[:, -1])
        assert last.inputs[name].shape[:1] == ids.shape[:1] and last.inputs[name].dim() == 2


def test_callbacks_see_every_call_while_retention_keeps_the_last(fresh):
    model, tok = fresh
    name = linear_modules(model)[0].name
    seen = []
    with torch.no_grad(), Trace(model, name, on_output=lambda n, o: seen.append(o.shape)) as trace:
        forward(model, tok, TEXTS[:1])
        forward(model, tok)
    assert len(seen) == 2 and seen[0][0] == 1 and trace.outputs[name].shape[0] == len(TEXTS)


def test_calls_are_ignored_while_the_trace_is_inactive(fresh):
    model, tok = fresh
    on = {"value": False}
    calls = []
    with trace_linear(model, active=lambda: on["value"], on_output_grad=lambda n, g: calls.append(n)) as trace:
        lm_loss(model, *encode(tok)).backward()
        assert not trace.outputs and not calls
        on["value"] = True
        lm_loss(model, *encode(tok)).backward()
    assert len(trace.outputs) == len(calls) == len(linear_modules(model))


def test_modules_can_be_given_by_name_module_or_architecture_map_entry(fresh):
    model, _ = fresh
    entries = linear_modules(model)
    by_entry = resolve_targets(model, entries)
    assert by_entry == resolve_targets(model, [m.name for m in entries])
    assert by_entry == resolve_targets(model, [m.module for m in entries])
    assert resolve_targets(model, entries[0]) == by_entry[:1]
    with pytest.raises(ValueError, match="more than once"):
        Trace(model, [entries[0], entries[0].name])
    with pytest.raises(ValueError, match="not part of"):
        Trace(model, torch.nn.Linear(2, 2))
    with pytest.raises(AttributeError):
        Trace(model, "no.such.module")


def test_a_trace_cannot_be_entered_twice_at_once(fresh):
    model, _ = fresh
    before = hook_count(model)
    trace = trace_linear(model)
    with trace:
        with pytest.raises(RuntimeError, match="already active"):
            trace.__enter__()
    assert hook_count(model) == before


def test_a_block_that_returns_a_tuple_is_captured_by_its_hidden_state(fresh):
    model, tok = fresh
    ids, mask = encode(tok)
    with torch.no_grad(), Trace(model, blocks(model)[0]) as trace:
        hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    (name,) = trace.names
    assert name.endswith(".0") and torch.equal(trace.outputs[name], hidden[1])


def test_usage_tracking_and_feature_extraction_leave_no_hooks_behind(fresh):
    model, tok = fresh
    before = hook_count(model)
    internal_features(model, tok, TEXTS, batch_size=2)
    assert hook_count(model) == before
    tracker = UsageTracker(model)
    with tracker:
        with tracker:  # nested attachment (a with block around a RecordUsage run) keeps one set of hooks
            assert hook_count(model) == before + len(linear_modules(model))
        assert hook_count(model) == before + len(linear_modules(model))
    assert hook_count(model) == before
