"""One evaluator for every method: the same suite, the same metrics, counts and intervals.

A suite (:class:`EvalSuite`) is what a scenario asks of an update: the facts to keep (and which of
them were known just before), the facts to learn with their target column, and the learned facts'
neighbourhood prompts. Metrics are a registry (:data:`METRICS`); each returns per-item outcomes, so
every accuracy carries its count and a 95 % Wilson interval, and two methods scored on the same
items can be compared by a paired test.

- ``exact_match`` (the headline; teacher-forced, every target token the argmax):
  ``acc_old`` (all kept facts), ``retention_old`` (those known just before), ``acc_new`` (learned facts
  with the update's target), ``acc_gen`` (their paraphrase prompts), and ``harmonic_mean`` of the last
  three (0 if any is 0).
- ``counterfact`` (CounterFact-style probability comparisons, P = exp(mean token log-probability) of a
  target after a prompt): ``efficacy_score`` = share of learned facts with P(update target) > P(other
  target) (the other of target_true / target_new), ``paraphrase_score`` the same on paraphrase prompts,
  ``neighbourhood_score`` = share of neighbourhood prompts (other subjects with the same true object)
  with P(target_true) > P(target_new); each ``*_magnitude`` is the mean difference of those
  probabilities.
- ``locality``: share of neighbourhood prompts whose next-token prediction (argmax after the prompt)
  is unchanged from the start model's (recorded by :func:`prepare` before the update).
- ``generation`` (opt-in: ``updates.metrics``): a greedy continuation of each learned fact's generation
  prompt (``GENERATION_TOKENS`` new tokens); ``generation_mentions`` = share of continuations that name
  the update's target, ``generation_entropy`` = their mean weighted 2-/3-gram entropy (ROME's fluency
  measure: weights 2/3 and 4/3, log base 2), with words split by a regular expression instead of a
  downloaded tokenizer; greedy decoding, so it is a relative measure (compare with the start model's).
"""

from __future__ import annotations

import contextvars
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from workflow_scripts.evaluation.exact_match import score_targets
from workflow_scripts.evaluation.stats import wilson
from workflow_scripts.models.encoding import pad_id

OTHER = {"target_true": "target_new", "target_new": "target_true"}
NEIGHBOURS_PER_FACT = 2  # neighbourhood prompts scored per learned fact (bounds the cost)


@dataclass(frozen=True)
class EvalSuite:
    keep: pd.DataFrame  # flat facts whose knowledge must survive
    known_before: frozenset[int]  # case ids of ``keep`` known just before the update
    learn: pd.DataFrame  # flat facts the update learns
    target: str  # column of ``learn`` holding the update's target
    neighbours: pd.DataFrame = field(default_factory=pd.DataFrame)  # case_id, item, prompt, target_true, target_new


@dataclass
class Outcomes:
    """Per-item outcomes of one evaluation: metric, case_id, item, correct (+ values for magnitudes)."""

    items: list[dict] = field(default_factory=list)
    values: dict[str, float] = field(default_factory=dict)

    def add(self, metric: str, case_ids: Sequence[int], correct: Sequence[bool], items: Sequence[int] | None = None):
        items = items if items is not None else [0] * len(case_ids)
        self.items.extend({"metric": metric, "case_id": int(c), "item": int(i), "correct": bool(x)}
                          for c, i, x in zip(case_ids, items, correct))


def harmonic_mean(values: Sequence[float]) -> float:
    values = [float(v) for v in values]
    if any(math.isnan(v) for v in values):
        return float("nan")
    if any(v <= 0 for v in values):
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


def neighbourhood_table(records: list[dict], case_ids, per_fact: int = NEIGHBOURS_PER_FACT) -> pd.DataFrame:
    """The first ``per_fact`` neighbourhood prompts of each fact in ``case_ids``."""
    wanted = set(case_ids)
    rows = []
    for r in records:
        if r["case_id"] not in wanted:
            continue
        rw = r["requested_rewrite"]
        for i, prompt in enumerate(r.get("neighborhood_prompts", [])[:per_fact]):
            rows.append({"case_id": r["case_id"], "item": i, "prompt": prompt,
                         "target_true": rw["target_true"]["str"], "target_new": rw["target_new"]["str"]})
    return pd.DataFrame(rows, columns=["case_id", "item", "prompt", "target_true", "target_new"])


_SCORED: contextvars.ContextVar[dict | None] = contextvars.ContextVar("scored_pairs", default=None)


def _scores(model, tok, prompts, targets) -> pd.DataFrame:
    """Teacher-forced scores of (prompt, target) pairs. Within one :func:`evaluate` call a pair is
    scored once, however many metrics ask for it (acquisition and efficacy score the update's prompts
    with the update's target; generalisation and paraphrase score the same paraphrases)."""
    prompts, targets = list(prompts), list(targets)
    if len(prompts) == 0:
        return pd.DataFrame({"correct": np.zeros(0, bool), "mean_logprob": np.zeros(0)})
    cache = _SCORED.get()
    if cache is None:
        return score_targets(model, tok, prompts, targets, batch_size=64)
    keys = list(zip(prompts, targets))
    missing = list(dict.fromkeys(k for k in keys if k not in cache))
    if missing:
        scored = score_targets(model, tok, [p for p, _ in missing], [t for _, t in missing], batch_size=64)
        cache.update(zip(missing, scored.to_dict("records")))
    return pd.DataFrame([cache[k] for k in keys])


def exact_match(model, tok, suite: EvalSuite, state=None) -> Outcomes:
    out = Outcomes()
    keep = _scores(model, tok, suite.keep.prompt, suite.keep.target_true).correct.to_numpy()
    out.add("acc_old", suite.keep.case_id, keep)
    known = suite.keep.case_id.isin(suite.known_before).to_numpy()
    out.add("retention_old", suite.keep.case_id[known], keep[known])
    learn = _scores(model, tok, suite.learn.prompt, suite.learn[suite.target]).correct.to_numpy()
    out.add("acc_new", suite.learn.case_id, learn)
    gen = suite.learn[suite.learn.paraphrase_prompt.notna()]
    out.add("acc_gen", gen.case_id, _scores(model, tok, gen.paraphrase_prompt, gen[suite.target]).correct.to_numpy())
    return out


def _preference(model, tok, prompts, preferred, other) -> tuple[np.ndarray, np.ndarray]:
    """(P(preferred) > P(other), P(preferred) - P(other)) per prompt."""
    a = np.exp(_scores(model, tok, prompts, preferred).mean_logprob.to_numpy())
    b = np.exp(_scores(model, tok, prompts, other).mean_logprob.to_numpy())
    return a > b, a - b


def counterfact(model, tok, suite: EvalSuite, state=None) -> Outcomes:
    out = Outcomes()
    other = OTHER[suite.target]
    learn = suite.learn
    hit, diff = _preference(model, tok, learn.prompt, learn[suite.target], learn[other])
    out.add("efficacy_score", learn.case_id, hit)
    out.values["efficacy_magnitude"] = float(diff.mean()) if len(diff) else float("nan")
    gen = learn[learn.paraphrase_prompt.notna()]
    hit, diff = _preference(model, tok, gen.paraphrase_prompt, gen[suite.target], gen[other])
    out.add("paraphrase_score", gen.case_id, hit)
    out.values["paraphrase_magnitude"] = float(diff.mean()) if len(diff) else float("nan")
    nb = suite.neighbours
    if len(nb):
        hit, diff = _preference(model, tok, nb.prompt, nb.target_true, nb.target_new)
        out.add("neighbourhood_score", nb.case_id, hit, nb["item"])
        out.values["neighbourhood_magnitude"] = float(diff.mean())
    else:
        out.values["neighbourhood_magnitude"] = float("nan")
    return out


def next_token_predictions(model, tok, prompts: Sequence[str], continuations: Sequence[str]) -> np.ndarray:
    """The argmax next token after each prompt, read from the teacher-forced scoring of ``prompt +
    " " + continuation`` at the prompt's last token (so within one evaluation it costs nothing when the
    pair is scored anyway; the prompt's tokens are those it has alone, the space going to the
    continuation's first token)."""
    return _scores(model, tok, prompts, continuations).first_token_argmax.to_numpy()


def locality_before(model, tok, suite: EvalSuite):
    nb = suite.neighbours
    return next_token_predictions(model, tok, nb.prompt, nb.target_true) if len(nb) else None


def locality(model, tok, suite: EvalSuite, state=None) -> Outcomes:
    out = Outcomes()
    if state is None or not len(suite.neighbours):
        return out
    nb = suite.neighbours
    after = next_token_predictions(model, tok, nb.prompt, nb.target_true)
    out.add("locality", nb.case_id, after == state, nb["item"])
    return out


GENERATION_TOKENS = 40
WORD = re.compile(r"\w+|[^\w\s]")


def ngram_entropy(text: str, ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)) -> float:
    """Weighted mean of the n-gram entropies (bits) of ``text``'s words (0 for too short a text)."""
    words = WORD.findall(text.lower())
    entropies = []
    for n in ns:
        grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        if not grams:
            entropies.append(0.0)
            continue
        counts = np.array(list(Counter(grams).values()), dtype=float)
        freqs = counts / counts.sum()
        entropies.append(float(-(freqs * np.log2(freqs)).sum()))
    w = np.asarray(weights, dtype=float)
    return float((np.asarray(entropies) * w).sum() / w.sum())


@torch.no_grad()
def greedy_continuations(model, tok, prompts: Sequence[str], new_tokens: int = GENERATION_TOKENS,
                         batch_size: int = 32) -> list[str]:
    """Greedy continuations (decoded new tokens) of each prompt, left-padded batches with a KV cache."""
    device = next(model.parameters()).device
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = [tok(p.rstrip())["input_ids"] for p in prompts[start : start + batch_size]]
        width = max(len(x) for x in chunk)
        ids = torch.full((len(chunk), width), pad_id(tok), dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, x in enumerate(chunk):
            ids[row, width - len(x):] = torch.tensor(x)
            mask[row, width - len(x):] = 1
        generated = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=new_tokens,
                                   do_sample=False, pad_token_id=pad_id(tok))
        out += tok.batch_decode(generated[:, width:], skip_special_tokens=True)
    return out


def generation(model, tok, suite: EvalSuite, state=None) -> Outcomes:
    out = Outcomes()
    learn = suite.learn[suite.learn.generation_prompt.notna()] if "generation_prompt" in suite.learn else suite.learn.iloc[:0]
    if not len(learn):
        out.values["generation_entropy"] = float("nan")
        return out
    texts = greedy_continuations(model, tok, learn.generation_prompt.tolist())
    targets = learn[suite.target].str.strip().str.lower().tolist()
    out.add("generation_mentions", learn.case_id, [t in x.lower() for t, x in zip(targets, texts)])
    out.values["generation_entropy"] = float(np.mean([ngram_entropy(x) for x in texts]))
    return out


@dataclass(frozen=True)
class Metric:
    name: str
    score: Callable[..., Outcomes]
    before: Callable | None = None  # state taken from the start model (e.g. its predictions)
    produces: tuple[str, ...] = ()


METRICS: dict[str, Metric] = {
    m.name: m for m in (
        Metric("exact_match", exact_match, produces=("acc_old", "retention_old", "acc_new", "acc_gen")),
        Metric("counterfact", counterfact, produces=("efficacy_score", "paraphrase_score", "neighbourhood_score")),
        Metric("locality", locality, before=locality_before, produces=("locality",)),
        Metric("generation", generation, produces=("generation_mentions",)),
    )
}
DEFAULT_METRICS = ("exact_match", "counterfact", "locality")
ACCURACIES = tuple(name for m in DEFAULT_METRICS for name in METRICS[m].produces)


def prepare(model, tok, suite: EvalSuite, metrics: Sequence[str] = DEFAULT_METRICS) -> dict:
    """State the metrics need from the start model, taken before the update."""
    return {name: METRICS[name].before(model, tok, suite) for name in metrics if METRICS[name].before}


def evaluate(model, tok, suite: EvalSuite, metrics: Sequence[str] = DEFAULT_METRICS,
             state: dict | None = None) -> tuple[dict, pd.DataFrame]:
    """(row, per-item outcomes). The row has every accuracy with ``_n``, ``_lo`` and ``_hi`` (its
    count and 95 % Wilson interval), the magnitudes, the counts n_old / n_retained_base / n_new, and
    the harmonic mean of retention, acquisition and generalisation."""
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; registered: {sorted(METRICS)}")
    state = state or {}
    outcomes = Outcomes()
    token = _SCORED.set({})  # the model does not change during one evaluation
    try:
        for name in metrics:
            result = METRICS[name].score(model, tok, suite, state.get(name))
            outcomes.items.extend(result.items)
            outcomes.values.update(result.values)
    finally:
        _SCORED.reset(token)
    items = pd.DataFrame(outcomes.items, columns=["metric", "case_id", "item", "correct"])
    row: dict = {}
    for name in (n for m in metrics for n in METRICS[m].produces):
        part = items.correct[items.metric == name]
        k, n = int(part.sum()), len(part)
        low, high = wilson(k, n)
        row.update({name: k / n if n else float("nan"), f"{name}_n": n, f"{name}_lo": low, f"{name}_hi": high})
    row.update(outcomes.values)
    if "exact_match" in metrics:
        row.update(n_old=row["acc_old_n"], n_retained_base=row["retention_old_n"], n_new=row["acc_new_n"])
        row["harmonic_mean"] = harmonic_mean([row["retention_old"], row["acc_new"], row["acc_gen"]])
    return row, items
