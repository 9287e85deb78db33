"""The training routine: masks hold, usage counts answer positions only, runs are deterministic."""

import random

import pytest
import torch

from workflow_scripts.facts.schema import flat_facts
from workflow_scripts.evaluation import accuracy
from workflow_scripts.models.encoding import encode_pair, pad_id
from workflow_scripts.models.architectures import linear_modules
from workflow_scripts.models.loading import load_model
from workflow_scripts.methods.neurons import StrategyInputs, neuron_mask
from workflow_scripts.training.masks import parameter_masks, tracked_parameter_names
from workflow_scripts.training.plugins import OnlyParameters, StopAtAccuracy, TrainingPlugin, UpdateMask
from workflow_scripts.training.train import (
    TrainConfig,
    add_embedding_rows,
    answer_loss,
    bf16_supported,
    clip_in_step,
    collate,
    collate_packed,
    embedding_leaf,
    random_batches,
    train,
)
from workflow_scripts.training.usage import UsageTracker, load_usage, save_usage


@pytest.fixture
def facts(starter):
    return flat_facts(starter[:24])


@pytest.fixture(params=["gpt2", "llama"])
def fresh(request, tiny_model_dirs):
    return load_model(tiny_model_dirs[request.param])


def test_full_training_learns_the_facts(fresh, facts):
    model, tok = fresh
    before = accuracy(model, tok, facts.prompt.tolist(), facts.target_true.tolist())
    prompts, targets = facts.prompt.tolist(), facts.target_true.tolist()
    history = train(model, tok, prompts, targets, TrainConfig(lr=3e-3, epochs=40, batch_size=8),
                    [StopAtAccuracy(tok, prompts, targets)])
    assert before < 0.2 and history[-1]["train_accuracy"] == 1.0
    assert history[-1]["loss"] < history[0]["loss"]


@pytest.mark.parametrize("tied", [True, False])
def test_row_wise_embedding_gradient_equals_autograds(fresh, facts, tied):
    model, tok = fresh
    if not tied:  # a separate head: the embedding's gradient then comes from the lookup alone
        head = model.get_output_embeddings()
        head.weight = torch.nn.Parameter(head.weight.detach().clone())
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied
    pairs = [encode_pair(tok, p, t) for p, t in zip(facts.prompt, facts.target_true)]
    input_ids, positions, answer, owner = collate_packed(pairs, list(range(8)))
    grads = []
    for rows in (False, True):
        model.zero_grad(set_to_none=True)
        embeds = embedding_leaf(model, input_ids) if rows else None
        answer_loss(model, input_ids, None, answer, position_ids=positions, owner=owner, inputs_embeds=embeds).backward()
        if rows:
            add_embedding_rows(model, input_ids, embeds)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    plain, row_wise = grads
    assert plain.keys() == row_wise.keys()
    for name in plain:
        assert torch.allclose(plain[name], row_wise[name], rtol=1e-5, atol=1e-7), name
    embedding = model.get_input_embeddings().weight
    used = torch.zeros(len(embedding), dtype=torch.bool)
    used[input_ids.flatten()] = True
    gradient = plain[[n for n, p in model.named_parameters() if p is embedding][0]]
    assert gradient[used].abs().sum() > 0
    if not tied:  # only the rows of the tokens used get any
        assert gradient[~used].abs().sum() == 0


def test_bf16_autocast_learns_like_fp32(tiny_model_dirs, facts):
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp16")
    if not bf16_supported(torch.device("cpu")):
        pytest.skip("no native bf16 on this CPU")
    results = {}
    for precision in ("fp32", "bf16"):
        model, tok = load_model(tiny_model_dirs["llama"])
        prompts, targets = facts.prompt.tolist(), facts.target_true.tolist()
        history = train(model, tok, prompts, targets, TrainConfig(lr=3e-3, epochs=40, batch_size=8, precision=precision),
                        [StopAtAccuracy(tok, prompts, targets)])
        assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
        results[precision] = history
    assert results["bf16"][-1]["train_accuracy"] == 1.0
    assert abs(len(results["bf16"]) - len(results["fp32"])) <= 5  # epochs to learn them all


@pytest.mark.parametrize("max_norm", [0.05, 1e3])  # clipping active / inactive
def test_clipping_inside_the_fused_step_equals_clip_grad_norm(max_norm):
    def run(fold: bool):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
        params = list(net.parameters())
        start = torch.cat([p.detach().flatten() for p in params])
        opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1, fused=True)
        norms = []
        for step in range(5):
            x, y = torch.randn(32, 8), torch.randn(32, 4)
            opt.zero_grad(set_to_none=True)
            (10 * (net(x) - y) ** 2).mean().backward()
            norms.append(float(clip_in_step(opt, params, max_norm) if fold
                               else torch.nn.utils.clip_grad_norm_(params, max_norm)))
            opt.step()
        end = torch.cat([p.detach().flatten() for p in params])
        return end, norms, (end - start).abs().max()

    folded, folded_norms, moved = run(True)
    plain, plain_norms, _ = run(False)
    assert min(plain_norms) > 0.05  # with max_norm 0.05 every step is clipped
    assert folded_norms == pytest.approx(plain_norms, rel=1e-5)
    assert moved > 1e-3 and torch.allclose(folded, plain, rtol=1e-5, atol=1e-6)


def test_masked_neurons_never_change_even_with_weight_decay(fresh, facts):
    model, tok = fresh
    widths = {m.name: m.out_features for m in linear_modules(model)}
    old = {n: torch.rand(w) for n, w in widths.items()}
    mask = neuron_mask("plastic", StrategyInputs(widths, old=old), k=40)
    pmasks = parameter_masks(model, mask)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, tok, facts.prompt.tolist(), facts.target_true.tolist(),
          TrainConfig(lr=1e-2, epochs=3, batch_size=8, weight_decay=0.1),
          [OnlyParameters(tracked_parameter_names(model)), UpdateMask(pmasks)])
    changed_neurons = 0
    for name, p in model.named_parameters():
        if name in pmasks:
            frozen = ~pmasks[name].expand_as(p)
            assert torch.equal(p.detach()[frozen], before[name][frozen]), name
            changed_neurons += int((p.detach() != before[name]).any())
        else:  # embeddings, norms, head: frozen in targeted arms
            assert torch.equal(p.detach(), before[name]), name
    assert changed_neurons > 0


def test_training_is_deterministic_for_a_seed(tiny_model_dirs, facts):
    runs = []
    for _ in range(2):
        model, tok = load_model(tiny_model_dirs["llama"])
        train(model, tok, facts.prompt.tolist(), facts.target_true.tolist(), TrainConfig(lr=3e-3, epochs=2, batch_size=5, seed=11))
        runs.append({n: p.detach().clone() for n, p in model.named_parameters()})
    assert all(torch.equal(runs[0][n], runs[1][n]) for n in runs[0])


def test_usage_sums_every_real_position_and_separately_the_answer_positions(fresh, facts):
    """Usage from a padded batch equals the gradient computed one fact at a time: over every real
    position for ``all_real`` and over the positions predicting answer tokens for ``answer``; padding
    never contributes."""
    model, tok = fresh
    prompts, targets = facts.prompt.tolist()[:6], facts.target_true.tolist()[:6]
    pairs = [encode_pair(tok, p, t) for p, t in zip(prompts, targets)]
    name = linear_modules(model)[0].name  # block 0: prompt positions get gradient through attention
    module = model.get_submodule(name)

    with UsageTracker(model) as tracker:
        ids, att, ans = collate(pairs, range(len(pairs)), pad_id=0)
        assert not att.bool().all()  # the batch has padding
        tracker.positions = {"all_real": att.bool(),
                             "answer": torch.cat([ans, torch.zeros(len(pairs), 1, dtype=torch.bool)], 1)}
        answer_loss(model, ids, att, ans).backward()
    batched = {kind: tracker.stats[kind]["sum"][name].float() for kind in ("all_real", "answer")}

    expected = {kind: torch.zeros_like(batched[kind]) for kind in batched}
    for p in pairs:
        ids, att, ans = collate([p], [0], pad_id=0)
        grads = {}

        def hook(mod, inputs, output, grads=grads):
            output.register_hook(lambda g: grads.setdefault("g", g))

        h = module.register_forward_hook(hook)
        (answer_loss(model, ids, att, ans) / len(pairs)).backward()
        h.remove()
        g = grads["g"][0]
        expected["answer"] += g[p.target_start - 1 : p.target_end - 1].sum(0).float()
        expected["all_real"] += g.sum(0).float()
        # the prompt positions do carry gradient, so the two sets really differ
        assert g[: p.target_start - 1].abs().sum() > 0
    for kind in batched:
        torch.testing.assert_close(batched[kind], expected[kind], rtol=1e-4, atol=1e-7)
    assert not torch.allclose(batched["all_real"], batched["answer"])


def test_usage_round_trips_through_safetensors(fresh, facts, tmp_path):
    model, tok = fresh
    with UsageTracker(model) as tracker:
        train(model, tok, facts.prompt.tolist()[:8], facts.target_true.tolist()[:8], TrainConfig(lr=1e-3, epochs=1))
    scores = tracker.scores()
    save_usage(scores, tmp_path / "u.safetensors", {"slice": "A"})
    for kind in ("all_real", "answer"):
        for score in ("abs_sum", "sum_abs", "sum_sq"):
            loaded = load_usage(tmp_path / "u.safetensors", score, kind)
            assert set(loaded) == {m.name for m in linear_modules(model)}
            assert all(torch.equal(loaded[k], scores[kind][score][k]) for k in loaded)
    sq, ab = load_usage(tmp_path / "u.safetensors", "sum_sq"), load_usage(tmp_path / "u.safetensors", "sum_abs")
    assert all((ab[k] >= load_usage(tmp_path / "u.safetensors", "abs_sum")[k] - 1e-6).all() for k in ab)
    assert all((sq[k] >= 0).all() for k in sq)
    with pytest.raises(ValueError, match="unknown usage score"):
        load_usage(tmp_path / "u.safetensors", "fisher")
    with pytest.raises(ValueError, match="unknown usage positions"):
        load_usage(tmp_path / "u.safetensors", "abs_sum", "prompt")


def test_a_short_last_batch_weighs_each_fact_like_any_other(fresh, facts):
    model, tok = fresh
    pairs = [encode_pair(tok, p, t) for p, t in zip(facts.prompt[:3], facts.target_true[:3])]
    ids, att, ans = collate(pairs, range(3), pad_id=0)
    with torch.no_grad():
        mean = answer_loss(model, ids, att, ans)
        nominal = answer_loss(model, ids, att, ans, per_batch=6)
    torch.testing.assert_close(nominal, mean * 3 / 6)


def test_packed_batch_has_the_padded_batch_loss_and_gradients(fresh, facts):
    model, tok = fresh
    model.eval()  # no dropout, so both forward passes are deterministic
    pairs = [encode_pair(tok, p, t) for p, t in zip(facts.prompt[:10], facts.target_true[:10])]
    assert len({len(p.ids) for p in pairs}) > 1  # the padded batch really has padding
    params = [p for p in model.parameters() if p.requires_grad]
    ids, att, ans = collate(pairs, range(10), pad_id=pad_id(tok))
    padded = answer_loss(model, ids, att, ans, per_batch=16)
    padded_grads = torch.autograd.grad(padded, params)
    ids, positions, ans, owner = collate_packed(pairs, range(10))
    assert ids.shape == (1, sum(len(p.ids) for p in pairs)) and positions[0, 0] == 0
    assert ans.sum() == sum(p.target_end - p.target_start for p in pairs) == len(owner)
    packed = answer_loss(model, ids, None, ans, per_batch=16, position_ids=positions, owner=owner)
    packed_grads = torch.autograd.grad(packed, params)
    torch.testing.assert_close(packed, padded, rtol=1e-5, atol=1e-6)
    for a, b in zip(packed_grads, padded_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_packed_and_padded_training_end_alike(tiny_model_dirs, facts):
    """One batch of every fact (the two paths batch differently: random batches when packed, length
    buckets when padded), so both take the same steps."""
    prompts, targets = facts.prompt.tolist(), facts.target_true.tolist()
    results = []
    for pack in (True, False):
        model, tok = load_model(tiny_model_dirs["llama"])  # no dropout
        history = train(model, tok, prompts, targets,
                        TrainConfig(lr=3e-3, epochs=4, batch_size=len(prompts), pack=pack))
        results.append(([h["loss"] for h in history], accuracy(model, tok, prompts, targets)))
    (loss_packed, acc_packed), (loss_padded, acc_padded) = results
    assert loss_packed == pytest.approx(loss_padded, rel=1e-3) and acc_packed == acc_padded


def test_packed_batches_are_a_fresh_random_partition_every_epoch():
    rng = random.Random(0)
    epochs = [random_batches(10, 4, rng) for _ in range(3)]
    for batches in epochs:
        assert sorted(i for b in batches for i in b) == list(range(10))
        assert [len(b) for b in batches] == [4, 4, 2]
    assert epochs[0] != epochs[1] != epochs[2]
    assert random_batches(10, 4, random.Random(0)) == epochs[0]  # seeded


def test_token_weights_of_one_give_the_unweighted_loss_and_zero_weights_silence_a_token(fresh, facts):
    model, tok = fresh
    pairs = [encode_pair(tok, p, t) for p, t in zip(facts.prompt[:4], facts.target_true[:4])]
    ids, att, ans = collate(pairs, range(4), pad_id(tok))
    plain = answer_loss(model, ids, att, ans)
    ones = answer_loss(model, ids, att, ans, token_weights=torch.ones(int(ans.sum())))
    torch.testing.assert_close(plain, ones)
    weights = torch.ones(int(ans.sum()))
    weights[0] = 0.0  # the first answer token of the first fact
    assert not torch.allclose(answer_loss(model, ids, att, ans, token_weights=weights), plain)


def test_plugins_are_called_at_their_hooks_in_order(fresh, facts):
    model, tok = fresh
    calls = []

    class Recorder(TrainingPlugin):
        def prepare(self, model):
            calls.append("prepare")

        def mix(self, pairs, rng):
            calls.append(("mix", len(pairs)))
            return pairs[:4]  # a plugin may change the data

        def token_weights(self, batch):
            calls.append(("batch", len(batch.idx)))

        def after_step(self, model, step):
            calls.append(("step", step))

        def on_epoch(self, model, epoch, record):
            calls.append(("epoch", epoch))
            return epoch == 2  # stop early

        def finish(self, model):
            calls.append("finish")

    history = train(model, tok, facts.prompt.tolist()[:8], facts.target_true.tolist()[:8],
                    TrainConfig(lr=1e-3, epochs=5, batch_size=4), [Recorder()])
    assert len(history) == 2
    assert calls == ["prepare", ("mix", 8), ("batch", 4), ("step", 1), ("epoch", 1), ("batch", 4), ("step", 2),
                     ("epoch", 2), "finish"]
    assert all(p.requires_grad for p in model.parameters())  # restored after training


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_row_deltas_take_the_same_steps_as_masks_on_whole_weights(tiny_model_dirs, facts, family):
    """Training only the chosen neurons as deltas (gradients and optimiser state for those rows only)
    ends where masking whole weights ends, changes nothing else, and leaves no delta behind."""
    from workflow_scripts.training.plugins import RowDeltas

    prompts, targets = facts.prompt.tolist()[:12], facts.target_true.tolist()[:12]
    cfg = TrainConfig(lr=3e-3, epochs=3, batch_size=4)
    ends = []
    for deltas in (False, True):
        model, tok = load_model(tiny_model_dirs[family])
        start = {n: p.detach().clone() for n, p in model.named_parameters()}
        modules = linear_modules(model)
        gen = torch.Generator().manual_seed(0)
        chosen = {m.name: torch.rand(m.out_features, generator=gen) < 0.3 for m in modules}
        if deltas:
            rows = {n: torch.nonzero(c).flatten() for n, c in chosen.items()}
            plugins = [RowDeltas(rows)]
        else:
            plugins = [OnlyParameters(tracked_parameter_names(model)), UpdateMask(parameter_masks(model, chosen))]
        history = train(model, tok, prompts, targets, cfg, plugins)
        params = dict(model.named_parameters())
        assert set(params) == set(start)  # the deltas are gone
        ends.append(({n: p.detach().clone() for n, p in params.items()}, [h["loss"] for h in history]))
        masks = parameter_masks(model, chosen)
        for n, p in params.items():
            if n in masks:
                assert torch.equal(torch.where(masks[n], start[n], p), start[n])  # only chosen rows moved
            else:
                assert torch.equal(p, start[n])
    (masked, loss_masked), (delta, loss_delta) = ends
    assert loss_delta == pytest.approx(loss_masked, rel=1e-4)
    # equal up to summation order (Adam turns near-zero gradients into sign-like steps: 1e-4 is ~0.3 % of one step)
    for n in masked:
        torch.testing.assert_close(delta[n], masked[n], rtol=1e-4, atol=1e-4)
    start = load_model(tiny_model_dirs[family])[0].state_dict()
    assert sum(int((delta[n] != start[n]).sum()) for n in delta) > 100  # it trained


def test_token_weighting_is_one_mean_over_the_batchs_answer_tokens(fresh, facts):
    model, tok = fresh
    # three rows with different target lengths: per-token weighting counts each row by its tokens
    rows = [(facts.prompt[0], facts.target_true[0]), (facts.prompt[1], facts.target_true[1] + " and more words"),
            (facts.prompt[2], facts.target_true[2] + " too")]
    pairs = [encode_pair(tok, p, t) for p, t in rows]
    ids, att, ans = collate(pairs, range(3), pad_id(tok))
    with torch.no_grad():
        from workflow_scripts.models.encoding import target_logits

        logits = target_logits(model, ids, att, ans)
        token_loss = torch.nn.functional.cross_entropy(logits, ids[:, 1:][ans], reduction="none")
        by_token = answer_loss(model, ids, att, ans, per_token=True)
        by_example = answer_loss(model, ids, att, ans)
    counts = ans.sum(1).tolist()
    assert len(set(counts)) == 3  # the lengths differ, so the two weightings differ
    torch.testing.assert_close(by_token, token_loss.mean())
    per_row = torch.stack([part.mean() for part in token_loss.split(counts)])
    torch.testing.assert_close(by_example, per_row.mean())
    assert not torch.allclose(by_token, by_example)
    with pytest.raises(ValueError, match="loss_weighting"):
        TrainConfig(loss_weighting="row")


def test_extra_rows_of_nothing_leave_training_bit_identical_and_rows_train_with_the_facts(tiny_model_dirs, facts):
    from workflow_scripts.training.plugins import ExtraRows

    prompts, targets = facts.prompt.tolist()[:8], facts.target_true.tolist()[:8]
    runs = []
    for plugins in ([], "none", "rows"):
        model, tok = load_model(tiny_model_dirs["llama"])
        extra = [] if plugins == [] else [ExtraRows(tok, [] if plugins == "none" else facts.prompt.tolist()[8:12],
                                                    [] if plugins == "none" else facts.target_true.tolist()[8:12])]
        train(model, tok, prompts, targets, TrainConfig(lr=3e-3, epochs=2, batch_size=4, seed=3), extra)
        runs.append({n: p.detach().clone() for n, p in model.named_parameters()})
        if plugins == "rows":
            assert extra[0].n_facts == 8
    assert all(torch.equal(runs[0][n], runs[1][n]) for n in runs[0])
    assert not all(torch.equal(runs[0][n], runs[2][n]) for n in runs[0])


def test_the_monitor_stops_training_once_the_facts_alone_are_known(tiny_model_dirs, facts):
    from workflow_scripts.training.plugins import ExtraRows

    model, tok = load_model(tiny_model_dirs["llama"])
    prompts, targets = facts.prompt.tolist()[:6], facts.target_true.tolist()[:6]
    # unlearnable rows: one prompt, many different targets (at most one can be the argmax)
    noise = ExtraRows(tok, [facts.prompt[10]] * 6, facts.target_true.tolist()[12:18])
    history = train(model, tok, prompts, targets, TrainConfig(lr=3e-3, epochs=60, batch_size=6),
                    [noise, StopAtAccuracy(tok, prompts, targets)])
    assert history[-1]["train_accuracy"] == 1.0 and len(history) < 60
    assert accuracy(model, tok, [facts.prompt[10]] * 6, facts.target_true.tolist()[12:18]) < 1.0


def test_random_batching_mixes_lengths_on_the_padded_path(tiny_model_dirs, facts, monkeypatch):
    import workflow_scripts.training.train as train_module

    def forbidden(*args, **kwargs):
        raise AssertionError("length-bucketed batches were used")

    monkeypatch.setattr(train_module, "length_bucketed_batches", forbidden)
    model, tok = load_model(tiny_model_dirs["llama"])
    train(model, tok, facts.prompt.tolist()[:8], facts.target_true.tolist()[:8],
          TrainConfig(lr=3e-3, epochs=1, batch_size=4, pack=False, batching="random"))
    with pytest.raises(AssertionError, match="bucketed"):
        train(model, tok, facts.prompt.tolist()[:8], facts.target_true.tolist()[:8],
              TrainConfig(lr=3e-3, epochs=1, batch_size=4, pack=False))


def test_resuscitation_runs_before_training_and_changes_only_up_projections(tiny_model_dirs, facts, starter):
    from tests.conftest import record_texts
    from workflow_scripts.entropy.coefficients import average_coefficients
    from workflow_scripts.training.plugins import Resuscitate

    model, tok = load_model(tiny_model_dirs["llama"])
    texts = list(record_texts(starter[:20]))[:16]
    cbar = average_coefficients(model, tok, texts)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    plugin = Resuscitate(cbar, ratio=0.5, q=2.0)
    up = next(n for n, _ in model.named_parameters() if "up_proj" in n)  # only this one trains afterwards
    train(model, tok, facts.prompt.tolist()[:4], facts.target_true.tolist()[:4],
          TrainConfig(lr=3e-3, epochs=1, batch_size=4), [plugin, OnlyParameters({up})])
    assert plugin.report["selected"] > 0
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed and all("up_proj" in n for n in changed)
