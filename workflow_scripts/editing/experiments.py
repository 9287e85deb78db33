"""The editors' own experiments: where facts live (causal tracing and a layer sweep) and sequential
editing (batches of edits applied one after another: where do the editors collapse?).

Both are plain functions of a model and tables, called by the rules ``editing_layers`` and
``editing_sequential`` (``workflow_scripts/steps/``) and usable outside Snakemake.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Sequence

import pandas as pd

from workflow_scripts.evaluation.evaluator import EvalSuite, evaluate
from workflow_scripts.evaluation.stats import wilson

log = logging.getLogger(__name__)


def trace_facts(flat: pd.DataFrame, known: set[int], n: int, seed: int) -> pd.DataFrame:
    """``n`` facts the model knows, drawn with a seed (one per subject), in case-id order."""
    pool = flat[flat.case_id.isin(known)].drop_duplicates("subject")
    if len(pool) < n:
        raise ValueError(f"causal tracing needs {n} facts the model knows (one per subject); only {len(pool)} are")
    chosen = sorted(random.Random(f"trace|{seed}").sample(sorted(pool.case_id), n))
    return pool.set_index("case_id").loc[chosen].reset_index()


def layer_experiment(model, tok, facts: pd.DataFrame, sites: Sequence[str], samples: int, noise: float, seed: int,
                     sweep_layers: Sequence[int], sweep_settings: dict, memit_width: int = 5, mlp_window: int = 5) -> dict:
    """Causal traces (per site: ``block`` = the residual stream, ``mlp`` = a window of ``mlp_window``
    MLP outputs around each layer, as in ROME) of ``facts`` with their true objects, the layers they
    suggest, and ROME's efficacy (counterfact targets) at each of ``sweep_layers``: the chosen layer
    has the highest efficacy, then the highest paraphrase efficacy, then lies nearest the block
    trace's peak at the subject's last token. Returns {"trace", "sweep", "choice"}."""
    from workflow_scripts.editing.covariance import covariance
    from workflow_scripts.editing.hparams import TargetSettings
    from workflow_scripts.editing.requests import EditRequest
    from workflow_scripts.editing.site import n_blocks
    from workflow_scripts.editing.templates import fixed_templates
    from workflow_scripts.editing.trace import causal_trace, choose_layers, efficacy_by_layer, efficacy_summary

    depth = n_blocks(model)
    bad = [layer for layer in sweep_layers if not 0 <= int(layer) < depth - 1]
    if bad:
        raise ValueError(f"editing.layers.sweep: layers {bad} are not among the editable blocks 0..{depth - 2}")
    true_requests = [EditRequest(r.prompt, r.subject, r.target_true, int(r.case_id)) for r in facts.itertuples()]
    traces = []
    for site in sites:
        start = time.perf_counter()
        table = causal_trace(model, tok, true_requests, site=site, samples=samples, noise=noise, seed=seed,
                             positions="key", window=mlp_window if site == "mlp" else 1)
        traces.append(table.assign(site=site))
        log.info("causal trace (%s) of %d facts in %.1f s", site, len(facts), time.perf_counter() - start)
    trace = pd.concat(traces, ignore_index=True)
    choice = {"n_blocks": depth, "facts": len(facts)}
    for site in sites:
        picked = choose_layers(trace[trace.site == site], depth, width=memit_width)
        choice[site] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in picked.items()}
    sweep = pd.DataFrame(columns=["layer", "case_id", "new_beats_old", "exact", "paraphrase_beats_old"])
    if sweep_layers:
        start = time.perf_counter()
        new_requests = [EditRequest(r.prompt, r.subject, r.target_new, int(r.case_id)) for r in facts.itertuples()]
        covs = covariance(model, tok, sorted(set(int(x) for x in sweep_layers)), corpus=sweep_settings["cov_corpus"],
                          tokens=int(sweep_settings["cov_tokens"]), max_len=int(sweep_settings["cov_max_len"]))
        hp = TargetSettings(steps=int(sweep_settings["steps"]), lr=float(sweep_settings["lr"]), clamp=4.0)
        sweep = efficacy_by_layer(model, tok, new_requests, facts.target_true.tolist(), sweep_layers, covs,
                                  fixed_templates([]), hp, paraphrases=facts.paraphrase_prompt.tolist())
        log.info("ROME layer sweep over %s in %.1f s", list(sweep_layers), time.perf_counter() - start)
        summary = efficacy_summary(sweep).merge(
            sweep.groupby("layer", as_index=False).paraphrase_beats_old.agg(lambda x: x.dropna().astype(float).mean())
            .rename(columns={"paraphrase_beats_old": "paraphrase"}), on="layer")
        peak = choice[sites[0]]["peak"]
        summary = summary.assign(distance=(summary.layer - peak).abs())
        best = summary.sort_values(["efficacy", "paraphrase", "distance"], ascending=[False, False, True]).iloc[0]
        choice["sweep"] = {"rome_layer": int(best.layer),
                           "efficacy_by_layer": {int(r.layer): float(r.efficacy) for r in summary.itertuples()},
                           "paraphrase_by_layer": {int(r.layer): float(r.paraphrase) for r in summary.itertuples()},
                           "exact_by_layer": {int(r.layer): float(r.exact) for r in summary.itertuples()}}
        top = max(0, depth - 2)
        first = max(0, min(int(best.layer) - memit_width // 2, top - memit_width + 1))
        choice["memit_layers"] = f"{first}-{min(top, first + memit_width - 1)}"
        choice["rome_layer"] = int(best.layer)
    else:
        block = choice[sites[0]]
        choice["memit_layers"] = f"{block['layers'][0]}-{block['layers'][-1]}"
        choice["rome_layer"] = int(block["rome_layer"])
    return {"trace": trace, "sweep": sweep, "choice": choice}


def sequential_editing(model, tok, method_name: str, params, old: pd.DataFrame, known_old: set[int],
                       stream: pd.DataFrame, target: str, batch: int, covariance=None, seed: int = 0) -> pd.DataFrame:
    """Edit ``stream`` in batches of ``batch`` facts, one batch after another on the same model; after
    each batch score the old facts known at the start (retention), every fact edited so far and the
    latest batch. One row per step with counts and 95 % Wilson intervals."""
    from workflow_scripts.methods.base import UpdateRequest, method

    m = method(method_name)
    if len(stream) < batch:
        raise ValueError(f"sequential editing needs at least one batch of {batch} facts; the stream has {len(stream)}")
    steps = len(stream) // batch
    known = old[old.case_id.isin(known_old)].reset_index(drop=True)
    rows = []
    inputs = {"covariance": covariance} if covariance is not None else {}
    total = 0.0
    for step in range(1, steps + 1):
        part = stream.iloc[(step - 1) * batch : step * batch].reset_index(drop=True)
        start = time.perf_counter()
        result = m.apply(model, tok, UpdateRequest(facts=part, target=target, training={}, seed=seed, inputs=inputs), params)
        model = result.model
        total += time.perf_counter() - start
        edited = stream.iloc[: step * batch].reset_index(drop=True).assign(paraphrase_prompt=None)
        _, items = evaluate(model, tok, EvalSuite(known, frozenset(known.case_id), edited, target), ("exact_match",))
        kept = items[items.metric == "retention_old"].correct
        correct = items[items.metric == "acc_new"].set_index("case_id").correct
        latest = correct.loc[part.case_id]
        earlier = correct.drop(part.case_id)
        out = {"method": method_name, "step": step, "edits": step * batch, "edit_seconds": total,
               **_share("retention_old", int(kept.sum()), len(kept)),
               **_share("acc_edited", int(correct.sum()), len(correct)),
               **_share("acc_latest", int(latest.sum()), len(latest)),
               **_share("acc_earlier", int(earlier.sum()), len(earlier))}
        rows.append(out)
        log.info("%s step %d (%d edits): %s", method_name, step, step * batch,
                 {k: round(v, 3) for k, v in out.items() if k in ("retention_old", "acc_earlier", "acc_latest")})
    return pd.DataFrame(rows)


def _share(name: str, k: int, n: int) -> dict:
    low, high = wilson(k, n) if n else (float("nan"), float("nan"))
    return {name: k / n if n else float("nan"), f"{name}_n": n, f"{name}_lo": low, f"{name}_hi": high}
