"""The exact-match metric: batched, padding-correct, and the same alone or in any batch."""

import numpy as np
import pandas as pd
import pytest
import torch

from workflow_scripts.evaluation import accuracy, score_targets
from workflow_scripts.models.encoding import encode_pair

PROMPTS = [
    "The capital of France is",
    "Eiffel Tower is located in the city of",
    "The official language of Japan is",
    "Lionel Messi plays the sport of",
    "The headquarters of Toyota are located in",
    "France",
]


def greedy_continuation(model, tokenizer, prompt, n_tokens):
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n_tokens, do_sample=False, pad_token_id=0,
                             attention_mask=torch.ones_like(ids))
    return out[0, ids.shape[1]:].tolist()


def test_encode_pair_marks_exactly_the_target_tokens(tiny):
    _, _, tok = tiny
    pair = encode_pair(tok, "The capital of France is", "Paris")
    assert pair.n_target == 1
    assert tok.decode(pair.ids[pair.target_start:pair.target_end]).strip() == "Paris"
    assert tok.decode(pair.ids[:pair.target_start]).strip() == "The capital of France is"


def test_greedy_targets_are_all_correct_including_the_longest(tiny):
    """Targets equal to the model's own greedy continuation must all score correct, whatever their
    length and batch; the original code always marked the longest example of a batch wrong."""
    _, model, tok = tiny
    targets = []
    for i, prompt in enumerate(PROMPTS):
        ids = greedy_continuation(model, tok, prompt, n_tokens=1 + i % 3)
        targets.append(" ".join(tok.convert_ids_to_tokens(ids)))
    scores = score_targets(model, tok, PROMPTS, targets, batch_size=len(PROMPTS))
    longest = int(np.argmax([len(encode_pair(tok, p, t).ids) for p, t in zip(PROMPTS, targets)]))
    assert scores.correct.all(), scores
    assert scores.correct[longest]
    assert (scores.first_token_rank == 1).all()


def test_a_fact_scores_the_same_alone_or_in_any_batch(tiny):
    _, model, tok = tiny
    targets = ["Paris", "Paris", "Japanese", "football", "Japan", "Paris"]
    alone = [score_targets(model, tok, [p], [t], batch_size=1) for p, t in zip(PROMPTS, targets)]
    alone = pd.concat(alone, ignore_index=True)
    for bs in (2, 4, len(PROMPTS)):
        batched = score_targets(model, tok, PROMPTS, targets, batch_size=bs)
        assert (batched.correct == alone.correct).all()
        assert (batched.first_token_rank == alone.first_token_rank).all()
        np.testing.assert_allclose(batched.first_token_prob, alone.first_token_prob, atol=1e-5)
        np.testing.assert_allclose(batched.mean_logprob, alone.mean_logprob, atol=1e-4)


def test_padding_token_never_affects_scores(tiny):
    _, model, tok = tiny
    targets = ["Paris", "Paris", "Japanese", "football", "Japan", "Paris"]
    base = score_targets(model, tok, PROMPTS, targets, batch_size=len(PROMPTS))
    original = tok.pad_token
    try:
        tok.pad_token = "Paris"  # a token that is also a target: must never be scored
        other = score_targets(model, tok, PROMPTS, targets, batch_size=len(PROMPTS))
    finally:
        tok.pad_token = original
    assert (base.correct == other.correct).all()
    np.testing.assert_allclose(base.mean_logprob, other.mean_logprob, atol=1e-5)


def test_every_target_token_must_be_the_argmax(tiny):
    _, model, tok = tiny
    prompt = PROMPTS[0]
    ids = greedy_continuation(model, tok, prompt, n_tokens=2)
    first, second = tok.convert_ids_to_tokens(ids)
    vocab = [w for w in tok.get_vocab() if not w.startswith("<") and w != second]
    wrong = vocab[0]
    scores = score_targets(model, tok, [prompt, prompt], [f"{first} {second}", f"{first} {wrong}"])
    assert scores.correct.tolist() == [True, False]
    assert scores.n_target_tokens.tolist() == [2, 2]
    # the first token is the same greedy token in both
    assert scores.first_token_rank.tolist() == [1, 1]


def test_accuracy_is_the_share_correct(tiny):
    _, model, tok = tiny
    ids = greedy_continuation(model, tok, PROMPTS[0], 1)
    right = tok.convert_ids_to_tokens(ids)[0]
    wrong = next(w for w in tok.get_vocab() if not w.startswith("<") and w != right)
    assert accuracy(model, tok, [PROMPTS[0]] * 4, [right, right, right, wrong], batch_size=3) == pytest.approx(0.75)


def test_mismatched_lengths_are_rejected(tiny):
    _, model, tok = tiny
    with pytest.raises(ValueError, match="2 prompts but 1 targets"):
        score_targets(model, tok, PROMPTS[:2], ["Paris"])


def test_head_only_at_target_positions_equals_full_logits(tiny):
    from workflow_scripts.models.encoding import target_logits

    _, model, tok = tiny
    enc = tok(["The capital of France is Paris", "Louvre is located in the city of Paris"], padding=True,
              return_tensors="pt")
    mask = enc["attention_mask"][:, 1:].bool()
    with torch.no_grad():
        full = model(**enc).logits[:, :-1][mask]
        fast = target_logits(model, enc["input_ids"], enc["attention_mask"], mask)
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-5)


def test_one_evaluation_scores_each_prompt_and_target_once_and_gets_the_same_numbers(tiny_model_dirs, starter, monkeypatch):
    """Acquisition and efficacy ask for the same (prompt, target) pairs; the evaluator scores them once,
    and its row equals the one scored metric by metric."""
    from workflow_scripts.evaluation import evaluator
    from workflow_scripts.evaluation.evaluator import EvalSuite, evaluate, neighbourhood_table
    from workflow_scripts.facts.schema import flat_facts
    from workflow_scripts.models.loading import load_model

    model, tok = load_model(tiny_model_dirs["gpt2"])
    flat = flat_facts(starter)
    suite = EvalSuite(flat.iloc[:8].reset_index(drop=True), frozenset(flat.case_id.iloc[:4]),
                      flat.iloc[8:14].reset_index(drop=True), "target_new", neighbourhood_table(starter, flat.case_id.iloc[8:14]))
    separate = {}
    for name in evaluator.METRICS:
        separate.update(evaluate(model, tok, suite, (name,))[0])
    calls = []
    real = evaluator.score_targets
    monkeypatch.setattr(evaluator, "score_targets", lambda m, t, p, g, **kw: calls.append(list(zip(p, g))) or real(m, t, p, g, **kw))
    together, _ = evaluate(model, tok, suite, ("exact_match", "counterfact"))
    pairs = [pair for call in calls for pair in call]
    assert len(pairs) == len(set(pairs))  # nothing scored twice
    for key in ("acc_new", "acc_gen", "efficacy_score", "paraphrase_score", "neighbourhood_score", "efficacy_magnitude"):
        assert together[key] == pytest.approx(separate[key], nan_ok=True), key
