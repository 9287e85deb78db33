"""The multi-round collaborative-editing experiment (rule ``merging_rounds``), usable outside Snakemake.

One trajectory = one merge rule and one state weight α: the collaborative scenario's facts E are
dealt into rounds of clients (``round_plan``); each round's edits are measured on the current model
and merged against the running state (``rounds.run_rounds``). After every round the one evaluator
scores every fact edited so far (exact match, efficacy, paraphrase) and the old facts K known
before (retention); each item carries the round it was edited in, so forgetting of round 1's edits
can be followed and compared between trajectories with paired tests.
"""

from __future__ import annotations

import logging
import time

import pandas as pd

from workflow_scripts.evaluation.evaluator import EvalSuite, evaluate

log = logging.getLogger(__name__)

ROUND_METRICS = {"acc_new": "exact_match", "efficacy_score": "efficacy", "paraphrase_score": "paraphrase",
                 "retention_old": "retention_old"}
SCENARIO = "collaborative_edit"


def rounds_experiment(inputs: dict, params: dict, spec: dict, rule: str, alpha) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-item outcomes after every round, per-round records) of one trajectory. ``inputs``: model,
    facts, slices, known, covariance, statistics (paths); ``params``: the merge method's params (MEMIT
    settings); ``spec``: rounds, clients, per_client, seed."""
    from workflow_scripts.editing.covariance import load_covariance
    from workflow_scripts.editing.requests import requests_from_facts
    from workflow_scripts.facts.schema import read_facts
    from workflow_scripts.merging.clients import load_statistics
    from workflow_scripts.merging.rounds import alpha_label, round_plan, run_rounds
    from workflow_scripts.methods.merging import MERGE
    from workflow_scripts.methods.run import build_suite
    from workflow_scripts.models.loading import load_model

    if not inputs.get("statistics"):
        raise ValueError("merging_rounds needs the per-fact statistics of the start model (rule merging_statistics)")
    p = MERGE.make_params({**params, "rule": rule}, "merging.rounds")
    suite = build_suite(SCENARIO, read_facts(inputs["facts"]), pd.read_parquet(inputs["slices"]),
                        pd.read_parquet(inputs["known"]))
    learn, keep, known, target = suite.learn, suite.keep, suite.known_before, suite.target
    plan = round_plan(learn.case_id.tolist(), int(spec["rounds"]), int(spec["clients"]), int(spec["per_client"]),
                      int(spec.get("seed", 0)))
    edited_in = {c: t for t, clients in enumerate(plan, start=1) for client in clients for c in client}
    model, tok = load_model(str(inputs["model"]), dtype="float32")
    layers = MERGE.edit_layers(model, p)
    first = load_statistics(inputs["statistics"], model)
    covs, _ = load_covariance(inputs["covariance"], model, layers)
    requests = {r.case_id: r for r in requests_from_facts(learn, target)}
    items = []

    def after_round(m, t):
        start = time.perf_counter()
        done = learn[learn.case_id.map(lambda c: edited_in[c] <= t)].reset_index(drop=True)
        _, out = evaluate(m, tok, EvalSuite(keep, known, done, target), ("exact_match", "counterfact"))
        out = out[out.metric.isin(ROUND_METRICS)].copy()
        out["after_round"] = t
        out["edited_in"] = out.case_id.map(lambda c: edited_in.get(int(c), 0))  # 0: an old fact (K)
        items.append(out)
        log.info("after round %d: %s (%.1f s)", t, out.groupby("metric").correct.mean().round(3).to_dict(),
                 time.perf_counter() - start)

    table = run_rounds(model, tok, plan, requests, p.rule, alpha, covs, first.lambdas, layers,
                       p.target_settings(p.clamp), first.templates,
                       {"ta_scale": p.ta_scale, "ties_keep": p.ties_keep, "ties_scale": p.ties_scale},
                       p.residual_split, first=first, after_round=after_round)
    outcomes = pd.concat(items, ignore_index=True).assign(rule=rule, alpha=alpha_label(alpha))
    outcomes["correct"] = outcomes.correct.astype(bool)
    return outcomes, pd.DataFrame(table)
