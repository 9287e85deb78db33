"""CollabEdit's two other challenges at CPU scale (rule ``merging_challenges``); forgetting is
multi-round editing (``experiments.rounds_experiment``).

- **Overlap**: one client's edits are submitted again by a second client. GLOBAL and CollabEdit count
  the repeated keys twice in one least-squares solve; task arithmetic adds both clients' deltas for
  them; the simple average and TIES divide by the clients. Scored: efficacy and exact match of the
  repeated and the other edits, per rule. Detection: after the edits are applied, each fact's residual
  ‖z* − h_L‖ is measured again on the edited model; an edit that is already in the model has a small
  residual, a new one a large one (CollabEdit monitors ‖R‖ this way).
- **Conflict**: two clients rewrite the same prompt with different objects (client A: the fact's
  counterfactual object; client B: another object of the same relation). After the merge, which object
  wins (exact match, and P(A) > P(B))? Then client B augments its request with the fact's paraphrase
  prompt (a second key for the same object, the detect-then-augment remedy): does B win more often?

Everything is measured on the start model with frozen MEMIT, against the collaborative scenario's
facts E; client A's statistics and every non-repeated fact's come from the cached per-fact statistics.
"""

from __future__ import annotations

import logging
import random
import time

import pandas as pd
import torch

from workflow_scripts.editing.requests import EditRequest
from workflow_scripts.merging.clients import apply_deltas, column_deltas, concat_statistics, edit_statistics, split_clients

log = logging.getLogger(__name__)

# CollabEdit equals GLOBAL (tested) and TIES behaves like the average here, so they are left out for time
OVERLAP_RULES = ("global", "ta", "sa")
CONFLICT_RULES = ("global", "sa")


def conflicting_objects(facts: pd.DataFrame, all_facts: pd.DataFrame, seed: int = 0) -> dict[int, str]:
    """case id -> a second counterfactual object for the fact: another fact's target of the same
    relation (its true or counterfactual object) that is neither this fact's true nor its
    counterfactual object, drawn with a seed; facts without one are left out."""
    rng = random.Random(f"conflict|{seed}")
    out = {}
    for r in facts.itertuples():
        same = all_facts[all_facts.relation_id == r.relation_id]
        pool = sorted({*same.target_true, *same.target_new} - {r.target_true, r.target_new})
        if pool:
            out[int(r.case_id)] = rng.choice(pool)
    return out


def _merge_apply(model, stats, columns, rule, priors, settings, split) -> None:
    """Merge the clients (column lists of ``stats``) under ``rule`` and write the result into ``model``."""
    apply_deltas(model, column_deltas(stats, columns, rule, priors, settings, split))


def _restore(model, saved: dict) -> None:
    from workflow_scripts.editing.site import edit_site

    with torch.no_grad():
        for layer, weight in saved.items():
            edit_site(model, layer).weight.copy_(weight)


def _scores(model, tok, prompts, a, b) -> tuple[list[bool], list[bool], list[bool]]:
    """(exact a, exact b, P(a) > P(b)) per prompt (mean token log-probability, as the evaluator)."""
    from workflow_scripts.evaluation.exact_match import score_targets

    sa, sb = score_targets(model, tok, prompts, a), score_targets(model, tok, prompts, b)
    return sa.correct.tolist(), sb.correct.tolist(), (sa.mean_logprob.to_numpy() > sb.mean_logprob.to_numpy()).tolist()


def challenges_experiment(model, tok, learn: pd.DataFrame, all_facts: pd.DataFrame, keep: pd.DataFrame, first,
                          covs, params, clients: int = 4, seed: int = 0, conflict_facts: int | None = None,
                          overlap_rules: tuple[str, ...] = OVERLAP_RULES, conflict_rules: tuple[str, ...] = CONFLICT_RULES
                          ) -> pd.DataFrame:
    """Per-item outcomes of the overlap and conflict experiments (columns experiment, condition, rule,
    case_id, measure, correct, group and, for the residual norms, value). ``conflict_facts``: how many
    of the facts get a conflicting second edit (all when None)."""
    from workflow_scripts.editing.site import edit_site
    from workflow_scripts.evaluation.exact_match import score_targets

    layers = tuple(first.layers)
    saved = {l: edit_site(model, l).weight.detach().clone() for l in layers}
    priors = {l: first.lambdas[l] * covs[l] for l in layers}
    settings = {"ta_scale": float(params.ta_scale), "ties_keep": float(params.ties_keep), "ties_scale": float(params.ties_scale)}
    split, targets = params.residual_split, params.target_settings(params.clamp)
    facts = learn.set_index("case_id")
    ids = [int(c) for c in learn.case_id]
    parts = split_clients(ids, clients, seed)
    rows: list[dict] = []
    kept = keep.reset_index(drop=True)

    def record(experiment, condition, rule, case_ids, measure, values, value=None, group=None):
        for i, (c, ok) in enumerate(zip(case_ids, values)):
            rows.append({"experiment": experiment, "condition": condition, "rule": rule, "case_id": int(c),
                         "measure": measure, "correct": bool(ok), "value": None if value is None else float(value[i]),
                         "group": group(c) if callable(group) else group})

    # --- overlap: client 1's facts submitted again by client 2 ---------------------------------------
    start = time.perf_counter()
    repeated = parts[0]
    overlap_clients = [parts[0], parts[1] + parts[0], *parts[2:]]
    for rule in overlap_rules:
        for condition, groups in (("separate", parts), ("overlap", overlap_clients)):
            _merge_apply(model, first, [first.columns(g) for g in groups], rule, priors, settings, split)
            new, true = facts.loc[ids, "target_new"].tolist(), facts.loc[ids, "target_true"].tolist()
            exact_new, _, wins = _scores(model, tok, facts.loc[ids, "prompt"].tolist(), new, true)
            for measure, values in (("exact", exact_new), ("efficacy", wins)):
                record("overlap", condition, rule, ids, measure, values,
                       group=lambda c: "repeated" if c in set(repeated) else "other")
            old = score_targets(model, tok, kept.prompt.tolist(), kept.target_true.tolist()).correct.tolist()
            record("overlap", condition, rule, kept.case_id.tolist(), "old_known", old, group="old")
            _restore(model, saved)
    # detection: residual norms after GLOBAL wrote half of (at most) 12 facts, for the written and the others
    probe = ids[: min(len(ids), 12)]
    half = probe[: len(probe) // 2]
    _merge_apply(model, first, [first.columns(half)], "global", priors, settings, split)
    again = edit_statistics(model, tok, [EditRequest(facts.loc[c, "prompt"], facts.loc[c, "subject"],
                                                     facts.loc[c, "target_new"], c) for c in probe],
                            layers, targets, first.templates, first.lambdas)
    _restore(model, saved)
    before = first.subset(probe).residual.norm(dim=0)
    after = again.residual.norm(dim=0)
    written = [c in set(half) for c in probe]
    for condition, chosen in (("already written", True), ("new", False)):
        sel = [i for i, w in enumerate(written) if w == chosen]
        record("overlap_detection", condition, "global", [probe[i] for i in sel], "residual_ratio",
               [True] * len(sel), (after[sel] / before[sel]).tolist())
    log.info("overlap experiment in %.1f s", time.perf_counter() - start)

    # --- conflict: two clients rewrite one prompt with different objects ------------------------------
    start = time.perf_counter()
    second = conflicting_objects(learn, all_facts, seed)
    both = [c for c in ids if c in second][: conflict_facts if conflict_facts else None]
    augmentable = [c for c in both if isinstance(facts.loc[c, "paraphrase_prompt"], str)
                   and facts.loc[c, "subject"] in facts.loc[c, "paraphrase_prompt"]]
    b_requests = [EditRequest(facts.loc[c, "prompt"], facts.loc[c, "subject"], second[c], -1 - i) for i, c in enumerate(both)]
    aug_requests = [EditRequest(facts.loc[c, "paraphrase_prompt"], facts.loc[c, "subject"], second[c], -10_000 - i)
                    for i, c in enumerate(augmentable)]
    b_stats = edit_statistics(model, tok, b_requests + aug_requests, layers, targets, first.templates, first.lambdas)
    a_stats = first.subset(both)
    joint = concat_statistics(a_stats, b_stats)
    a_cols, b_cols = list(range(len(both))), list(range(len(both), 2 * len(both)))
    aug_cols = list(range(2 * len(both), 2 * len(both) + len(augmentable)))
    prompts = facts.loc[both, "prompt"].tolist()
    a_targets, b_targets = facts.loc[both, "target_new"].tolist(), [second[c] for c in both]
    for rule in conflict_rules:
        for condition, b_side in (("conflict", b_cols), ("conflict, B augmented", b_cols + aug_cols)):
            _merge_apply(model, joint, [a_cols, b_side], rule, priors, settings, split)
            exact_a, exact_b, a_wins = _scores(model, tok, prompts, a_targets, b_targets)
            record("conflict", condition, rule, both, "exact_a", exact_a)
            record("conflict", condition, rule, both, "exact_b", exact_b)
            record("conflict", condition, rule, both, "a_beats_b", a_wins)
            _restore(model, saved)
    log.info("conflict experiment (%d facts, %d augmented) in %.1f s", len(both), len(augmentable), time.perf_counter() - start)
    return pd.DataFrame(rows)


def run_challenges(inputs: dict, params: dict, spec: dict) -> pd.DataFrame:
    """The rule's entry: the collaborative scenario's facts, start model, covariance and cached statistics
    from ``inputs`` (paths); ``params``: the merge method's params; ``spec``: clients, seed."""
    from workflow_scripts.editing.covariance import load_covariance
    from workflow_scripts.facts.schema import flat_facts, read_facts
    from workflow_scripts.merging.clients import load_statistics
    from workflow_scripts.methods.merging import MERGE
    from workflow_scripts.methods.run import build_suite
    from workflow_scripts.models.loading import load_model

    p = MERGE.make_params(params, "merging.challenges")
    records = read_facts(inputs["facts"])
    suite = build_suite("collaborative_edit", records, pd.read_parquet(inputs["slices"]), pd.read_parquet(inputs["known"]))
    keep = suite.keep[suite.keep.case_id.isin(suite.known_before)]
    model, tok = load_model(inputs["model"], dtype="float32")
    first = load_statistics(inputs["statistics"], model)
    covs, _ = load_covariance(inputs["covariance"], model, first.layers)
    return challenges_experiment(model, tok, suite.learn, flat_facts(records), keep, first, covs, p, int(spec.get("clients", 4)),
                                 int(spec.get("seed", 0)), int(spec.get("conflict_facts", 0)) or None)
