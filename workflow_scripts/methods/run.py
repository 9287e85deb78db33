"""The harness: one run = one scenario, one method with typed params, one fold.

Loads the scenario's start checkpoint, builds its evaluation suite (what to keep, what was known just
before, what to learn and with which target), takes the metrics' reference state from the start model,
applies the method, scores the result with the one evaluator, and writes the run's row, its per-epoch
curve and its per-item outcomes (for paired tests). It never branches on a method's name.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from workflow_scripts.evaluation.evaluator import DEFAULT_METRICS, EvalSuite, evaluate, neighbourhood_table, prepare
from workflow_scripts.facts.schema import flat_facts, read_facts
from workflow_scripts.io import write_json, write_parquet
from workflow_scripts.methods.base import UpdateRequest, method
from workflow_scripts.scenarios.design import scenario
from workflow_scripts.scenarios.slices import known_case_ids

log = logging.getLogger(__name__)

CURVE_METRICS = ("exact_match",)
LEARNED = 0.9  # "learned" = at least this share of the update's facts (matched-acquisition retention)


def build_suite(scenario_name: str, records: list[dict], slices: pd.DataFrame, known: pd.DataFrame) -> EvalSuite:
    s = scenario(scenario_name)
    flat = flat_facts(records)
    keep = flat[flat.case_id.isin(slices.case_id[slices.slice == s.keep])].reset_index(drop=True)
    learn = flat[flat.case_id.isin(slices.case_id[slices.slice == s.learn])].reset_index(drop=True)
    if keep.empty or learn.empty:
        raise ValueError(f"scenario {s.name}: slice {s.keep if keep.empty else s.learn!r} is empty")
    known_before = frozenset(known_case_ids(known) & set(keep.case_id))
    return EvalSuite(keep, known_before, learn, s.target, neighbourhood_table(records, learn.case_id))


def start_scores(model, tok, suite: EvalSuite) -> dict:
    """The start model's scores, taken before an update: each slice's accuracy (``before``) and the
    metrics' reference state (``state``: e.g. the neighbourhood predictions locality compares with),
    in the JSON form :func:`score_start` writes."""
    state = prepare(model, tok, suite)
    before, _ = evaluate(model, tok, suite, CURVE_METRICS)
    return {"before": before, "state": {k: (v.tolist() if v is not None else None) for k, v in state.items()}}


def score_start(scenario_name: str, inputs: dict[str, str], out: str | None = None) -> dict:
    """Rule update_start: the scenario's start model scored once per fold, for every run of it
    (:func:`start_scores`), written as JSON when ``out`` is given."""
    from workflow_scripts.models.loading import load_model

    records = read_facts(inputs["facts"])
    suite = build_suite(scenario_name, records, pd.read_parquet(inputs["slices"]), pd.read_parquet(inputs["known"]))
    model, tok = load_model(str(inputs["model"]), dtype="float32")
    start = start_scores(model, tok, suite)
    if out is not None:
        write_json(start, out)
    return start


def read_start(start: str | dict) -> tuple[dict, dict]:
    """(before, state) of :func:`start_scores` (or its file), the state as the metrics take it."""
    if not isinstance(start, dict):
        start = json.loads(Path(start).read_text(encoding="utf-8"))
    state = {k: (np.asarray(v, dtype=np.int64) if v is not None else None) for k, v in start["state"].items()}
    return start["before"], state


HARNESS_INPUTS = ("model", "facts", "slices", "known", "start", "lr_rates",  # read by the harness itself
                  "entropy_texts", "entropy_start")


def method_inputs(inputs: dict) -> dict[str, str]:
    """The inputs a method declared in ``needs`` (everything but the harness's own): ``usage_<role>``
    files as ``usage:<role>``, the rest (``covariance``, ``statistics``, ...) under their own names."""
    return {(f"usage:{k[len('usage_'):]}" if k.startswith("usage_") else k): str(v)
            for k, v in inputs.items() if k not in HARNESS_INPUTS and v}


def entropy_arm(model, tok, inputs: dict, spec: dict) -> dict:
    """The result's knowledge entropy columns (:mod:`workflow_scripts.entropy.arms`) on the texts of
    input ``entropy_texts``, paired with the start's coefficients (``entropy_start``); {} without a spec."""
    if not spec:
        return {}
    missing = [k for k in ("entropy_texts", "entropy_start") if not inputs.get(k)]
    if missing:
        raise ValueError(f"an entropy arm needs the inputs {missing}")
    from workflow_scripts.entropy.arms import measure_arm
    from workflow_scripts.entropy.experiment import load_coefficients

    texts = pd.read_parquet(str(inputs["entropy_texts"])).text.tolist()
    if "texts" in spec and len(texts) != int(spec["texts"]):
        raise ValueError(f"{inputs['entropy_texts']} holds {len(texts)} texts, entropy.texts is {spec['texts']}")
    start = load_coefficients(str(inputs["entropy_start"]))
    return measure_arm(model, tok, texts, start, max_tokens=int(spec["max_tokens"]), n_boot=int(spec["bootstrap"]),
                       seed=int(spec["seed"]))


def run_update(job: dict, inputs: dict[str, str], training: dict, out_row: str, out_curve: str,
               out_items: str, entropy: dict | None = None) -> dict:
    """``job``: the run table's record (scenario, method, variant, fold, seed, params, curves,
    curve_every); ``inputs``: model, facts, slices, known, the start scores (``start``; computed here
    when absent), ``usage_<role>`` files the method needs and, with an ``entropy`` spec (texts,
    max_tokens, bootstrap, seed), ``entropy_texts`` and ``entropy_start`` for :func:`entropy_arm`."""
    from workflow_scripts.models.loading import load_model

    s, m = scenario(job["scenario"]), method(job["method"])
    params = m.make_params(job["params"])
    tuned_ratio = float("nan")
    if job.get("tuned"):  # the family's rate from the lr_tuning scenario, times this setting's own ratio
        from workflow_scripts.methods.tuning import read_rate

        tuned_ratio = read_rate(str(inputs["lr_rates"]), m.name)
        params = dataclasses.replace(params, lr_ratio=params.lr_ratio * tuned_ratio)
    records = read_facts(inputs["facts"])
    suite = build_suite(s.name, records, pd.read_parquet(inputs["slices"]), pd.read_parquet(inputs["known"]))
    model, tok = load_model(str(inputs["model"]), dtype="float32")
    before, state = read_start(str(inputs["start"]) if inputs.get("start") else start_scores(model, tok, suite))
    curve = Curve(suite, tok, int(job.get("curve_every", 1)), before) if job["curves"] else None

    request = UpdateRequest(
        facts=suite.learn, target=s.target, training=training, seed=int(job["seed"]),
        inputs=method_inputs(inputs),
        checkpoint=curve.checkpoint if curve is not None else None,
    )
    result = m.apply(model, tok, request, params)
    row, items = evaluate(result.model, tok, suite, tuple(job.get("metrics", DEFAULT_METRICS)), state=state)
    stats = dict(result.stats)
    train_seconds = stats.pop("seconds") - (curve.seconds if curve is not None else 0.0)
    points = curve.finish(row, stats) if curve is not None else [
        curve_point(stats["epochs_run"], stats["final_loss"], row)]
    row.update({f"{k}_before": before[k] for k in ("acc_old", "retention_old", "acc_new", "acc_gen")})
    row.update(matched_acquisition(points))
    key = {"scenario": s.name, "paper": s.paper, "stage": s.stage, "method": m.name, "variant": job["variant"],
           "fold": int(job["fold"]), "seed": int(job["seed"])}
    columns = {"strategy": None, "oracle": False, **result.columns, "lr_tuned_ratio": tuned_ratio}
    arm = entropy_arm(result.model, tok, inputs, entropy or {})
    full_row = {**key, **columns, **row, **stats, "train_seconds": train_seconds, **arm}
    write_parquet(pd.DataFrame([full_row]), out_row)
    write_parquet(pd.DataFrame(points).assign(**key, arm=columns["arm"], k=columns.get("k")), out_curve)
    write_parquet(items.assign(**key), out_items)
    log.info("%s / %s / %s fold %s: %s", s.name, m.name, job["variant"], job["fold"],
             {k: row[k] for k in ("retention_old", "acc_new", "acc_gen", "locality") if k in row})
    return full_row


def matched_acquisition(curve: list[dict], threshold: float = LEARNED) -> dict:
    """The first epoch whose update accuracy reaches ``threshold`` and the retention then (NaN when
    no evaluated epoch did, or without per-epoch curves only the last epoch is known)."""
    for point in curve:
        if point["epoch"] >= 1 and point["acc_new"] >= threshold:
            return {"learned_epoch": float(point["epoch"]), "retention_at_learned": float(point["retention_old"])}
    return {"learned_epoch": float("nan"), "retention_at_learned": float("nan")}


CURVE_COLUMNS = ("retention_old", "acc_new")  # what a per-epoch curve tracks (with _n, _lo, _hi)


def curve_suite(suite: EvalSuite) -> EvalSuite:
    """What a per-epoch curve needs, and no more: the kept facts known just before the update
    (retention) and the update's facts without their paraphrases (acquisition)."""
    keep = suite.keep[suite.keep.case_id.isin(suite.known_before)].reset_index(drop=True)
    learn = suite.learn.assign(paraphrase_prompt=None)
    return EvalSuite(keep, suite.known_before, learn, suite.target)


class Curve:
    """Per-epoch curve of one run. Until the update is learned (acquisition >= :data:`LEARNED`) every
    epoch is scored for acquisition, and the first learned epoch for retention too, so the epoch and
    the retention at matched acquisition are exact; otherwise every ``every``-th epoch is scored for
    both (``every`` = 1: every epoch, both). The last point is the run's final evaluation (of the
    returned model, e.g. with LoRA merged) rather than a second pass over the same facts."""

    def __init__(self, suite: EvalSuite, tok, every: int, before: dict):
        tracked = curve_suite(suite)
        self.acquisition = EvalSuite(tracked.keep.iloc[:0], tracked.known_before, tracked.learn, tracked.target)
        self.retention = EvalSuite(tracked.keep, tracked.known_before, tracked.learn.iloc[:0], tracked.target)
        self.tok, self.every, self.seconds, self.learned = tok, max(1, every), 0.0, False
        self.points = [curve_point(0, float("nan"), before)]
        self.last: tuple[int, float] | None = None

    def checkpoint(self, model, epoch: int, record: dict) -> None:
        if record.get("last"):
            self.last = (epoch, record["loss"])
            return
        scheduled = epoch % self.every == 0
        if self.learned and not scheduled:
            return
        start = time.perf_counter()
        row, _ = evaluate(model, self.tok, self.acquisition, CURVE_METRICS)
        first_learned = not self.learned and row["acc_new"] >= LEARNED
        self.learned |= first_learned
        if first_learned or scheduled:
            row.update({k: v for k, v in evaluate(model, self.tok, self.retention, CURVE_METRICS)[0].items()
                        if k.startswith("retention_old")})
        else:
            row.update({f"retention_old{suffix}": float("nan") for suffix in ("", "_lo", "_hi")}, retention_old_n=0)
        self.points.append(curve_point(epoch, record["loss"], row))
        self.seconds += time.perf_counter() - start

    def finish(self, row: dict, stats: dict) -> list[dict]:
        """The points, ending with the final evaluation's (at the last epoch trained)."""
        if self.last is not None or self.points[-1]["epoch"] < stats["epochs_run"]:
            loss = self.last[1] if self.last is not None else stats.get("final_loss", float("nan"))
            self.points.append(curve_point(stats["epochs_run"], loss, row))
        return self.points


def curve_point(epoch, loss, row: dict) -> dict:
    return {"epoch": epoch, "loss": loss,
            **{f"{m}{suffix}": row[f"{m}{suffix}"] for m in CURVE_COLUMNS for suffix in ("", "_n", "_lo", "_hi")}}
