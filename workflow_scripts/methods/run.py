"""The harness: one run = one scenario, one method with typed params, one fold.

Loads the scenario's start checkpoint, builds its evaluation suite (what to keep, what was known just
before, what to learn and with which target), takes the metrics' reference state from the start model,
applies the method, scores the result with the one evaluator, and writes the run's row, its per-epoch
curve and its per-item outcomes (for paired tests). It never branches on a method's name.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import pandas as pd

from workflow_scripts.evaluation.evaluator import EvalSuite, evaluate, neighbourhood_table, prepare
from workflow_scripts.facts.schema import flat_facts, read_facts
from workflow_scripts.io import write_parquet
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


def run_update(job: dict, inputs: dict[str, str], training: dict, out_row: str, out_curve: str,
               out_items: str) -> dict:
    """``job``: the run table's record (scenario, method, variant, fold, seed, params, curves);
    ``inputs``: model, facts, slices, known, and ``usage_<role>`` files the method needs."""
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
    state = prepare(model, tok, suite)
    before, _ = evaluate(model, tok, suite, CURVE_METRICS)  # each slice's accuracy just before the update
    tracked = curve_suite(suite)
    curve, eval_seconds = ([curve_point(0, float("nan"), before)] if job["curves"] else []), 0.0

    def checkpoint(current, epoch, record):
        nonlocal eval_seconds
        start = time.perf_counter()
        row, _ = evaluate(current, tok, tracked, CURVE_METRICS)
        curve.append(curve_point(epoch, record["loss"], row))
        eval_seconds += time.perf_counter() - start

    request = UpdateRequest(
        facts=suite.learn, target=s.target, training=training, seed=int(job["seed"]),
        inputs={f"usage:{k[len('usage_'):]}": str(v) for k, v in inputs.items() if k.startswith("usage_")},
        checkpoint=checkpoint if job["curves"] else None,
    )
    result = m.apply(model, tok, request, params)
    row, items = evaluate(result.model, tok, suite, state=state)
    stats = dict(result.stats)
    train_seconds = stats.pop("seconds") - eval_seconds
    if not curve:
        curve.append(curve_point(stats["epochs_run"], stats["final_loss"], row))
    row.update({f"{k}_before": before[k] for k in ("acc_old", "retention_old", "acc_new", "acc_gen")})
    row.update(matched_acquisition(curve))
    key = {"scenario": s.name, "paper": s.paper, "stage": s.stage, "method": m.name, "variant": job["variant"],
           "fold": int(job["fold"]), "seed": int(job["seed"])}
    columns = {"strategy": None, "oracle": False, **result.columns, "lr_tuned_ratio": tuned_ratio}
    full_row = {**key, **columns, **row, **stats, "train_seconds": train_seconds}
    write_parquet(pd.DataFrame([full_row]), out_row)
    write_parquet(pd.DataFrame(curve).assign(**key, arm=columns["arm"], k=columns.get("k")), out_curve)
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


def curve_point(epoch, loss, row: dict) -> dict:
    return {"epoch": epoch, "loss": loss,
            **{f"{m}{suffix}": row[f"{m}{suffix}"] for m in CURVE_COLUMNS for suffix in ("", "_n", "_lo", "_hi")}}
