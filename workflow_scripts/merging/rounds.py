"""Multi-round collaborative editing with a running covariance state (editing-merging.md §8.3).

Per edited layer the state is P_t, with P_1 = λC. In round t every client measures its new edits'
keys K_{t,i} and residuals R_{t,i} on the current model M_t (frozen MEMIT), solves
Δ_{t,i} = R_{t,i} K_{t,i}ᵀ (P_t + S_{t,i})⁻¹ against the *current* state, and the server merges; then
M_{t+1} = M_t + Δ_t and P_{t+1} = P_t + α Σ_i S_{t,i}.

- α = 0: the fixed covariance (each round forgets that earlier edits exist);
- α = 1: P_t + K_tK_tᵀ is the normal matrix of the joint least squares over all rounds' keys;
- α = "lambda": each past key weighs λ current keys (what CollabEdit's code adds, λ·KKᵀ).

Each client's Gram matrix is formed from its own keys only, once per round, after every client has
solved (CollabEdit's code mixes in the last client's keys and updates the state inside the client
loop, bug B3; a test guards against it).
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Mapping, Sequence

import torch

from workflow_scripts.editing.hparams import TargetSettings
from workflow_scripts.editing.requests import EditRequest
from workflow_scripts.merging.clients import EditStatistics, apply_deltas, edit_statistics, merged_deltas
from workflow_scripts.merging.merges import gram

log = logging.getLogger(__name__)


def alpha_label(alpha: float | str) -> str:
    """"0", "1", "0.5" or "lambda": how a state weight is named in files and tables."""
    return "lambda" if alpha == "lambda" else format(float(alpha), "g")


def alpha_value(alpha: float | str, lam: float) -> float:
    """The numeric weight of the state update: a number, or ``"lambda"`` (= λ of that layer)."""
    if alpha == "lambda":
        return float(lam)
    value = float(alpha)
    if value < 0:
        raise ValueError(f"alpha must be >= 0 or 'lambda', got {alpha!r}")
    return value


class CovarianceState:
    """The per-layer state P_t of multi-round editing."""

    def __init__(self, covs: Mapping[int, torch.Tensor], lambdas: Mapping[int, float], alpha: float | str):
        self.alpha = alpha
        self.weights = {int(l): alpha_value(alpha, lambdas[l]) for l in lambdas}
        self.p = {int(l): float(lambdas[l]) * covs[l].to(torch.float64) for l in lambdas}

    def add(self, keys_by_client: Mapping[int, Sequence[torch.Tensor]]) -> None:
        """P_{t+1} = P_t + α Σ_i K_{t,i} K_{t,i}ᵀ, per layer, each Gram from one client's keys."""
        for layer, keys in keys_by_client.items():
            if self.weights[layer]:
                self.p[layer] = self.p[layer] + self.weights[layer] * sum(gram(k) for k in keys)


def run_rounds(model, tokenizer, rounds: Sequence[Sequence[Sequence[int]]], requests: Mapping[int, EditRequest],
               rule: str, alpha: float | str, covs: Mapping[int, torch.Tensor], lambdas: Mapping[int, float],
               layers: Sequence[int], targets: TargetSettings, templates: Sequence[str], settings: dict | None = None,
               split: str = "remaining", first: EditStatistics | None = None, check_global: bool = True,
               after_round: Callable[[object, int], None] | None = None) -> list[dict]:
    """Edit ``model`` in place over the rounds (round -> client -> case ids) and return one record per
    round: seconds, the state's size, residual norms and, for ``collabedit`` with ``check_global``,
    the largest difference from GLOBAL's delta on the same statistics. ``first``: round 1's statistics
    when already measured on this very model (the cached per-fact statistics); ``after_round(model, t)``
    is called after each round's edit (t from 1)."""
    layers = tuple(int(x) for x in layers)
    state = CovarianceState({l: covs[l] for l in layers}, {l: lambdas[l] for l in layers}, alpha)
    records = []
    for t, clients in enumerate(rounds, start=1):
        start = time.perf_counter()
        facts = [c for client in clients for c in client]
        if t == 1 and first is not None:
            stats = first.subset(facts)
        else:
            stats = edit_statistics(model, tokenizer, [requests[c] for c in facts], layers, targets, templates, lambdas)
        measured = time.perf_counter() - start
        priors = dict(state.p)
        deltas = merged_deltas(stats, clients, rule, priors, settings, split)
        record = {"round": t, "rule": rule, "alpha": alpha_label(alpha), "edits": len(facts), "clients": len(clients),
                  "measure_seconds": measured, "residual_norm_mean": float(stats.residual.norm(dim=0).mean()),
                  "state_trace_ratio": float(sum(torch.trace(priors[l]) for l in layers)
                                             / sum(lambdas[l] * torch.trace(covs[l].to(torch.float64)) for l in layers)),
                  "delta_norm": float(torch.sqrt(sum((d ** 2).sum() for d in deltas.values())))}
        if check_global and rule == "collabedit":
            reference = merged_deltas(stats, clients, "global", priors, settings, split)
            record["max_diff_vs_global"] = max(float((deltas[l] - reference[l]).abs().max()) for l in layers)
            record["max_rel_diff_vs_global"] = max(float((deltas[l] - reference[l]).abs().max() / reference[l].abs().max())
                                                   for l in layers)
        apply_deltas(model, deltas)
        state.add({l: [stats.keys[l][:, stats.columns(c)] for c in clients] for l in layers})
        record["seconds"] = time.perf_counter() - start
        records.append(record)
        log.info("round %d (%s, alpha %s): %d edits from %d clients in %.1f s", t, rule, alpha, len(facts),
                 len(clients), record["seconds"])
        if after_round is not None:
            after_round(model, t)
    return records


def round_plan(case_ids: Sequence[int], rounds: int, clients: int, per_client: int, seed: int = 0) -> list[list[list[int]]]:
    """Deal ``rounds × clients × per_client`` facts (a seeded shuffle of ``case_ids``) into rounds of
    clients; each client's facts in case-id order."""
    import random

    need = rounds * clients * per_client
    if len(case_ids) < need:
        raise ValueError(f"multi-round editing needs {need} facts ({rounds} rounds x {clients} clients x "
                         f"{per_client} edits); only {len(case_ids)} are available")
    order = sorted(int(c) for c in case_ids)
    random.Random(f"rounds|{seed}").shuffle(order)
    plan, k = [], 0
    for _ in range(rounds):
        part = []
        for _ in range(clients):
            part.append(sorted(order[k : k + per_client]))
            k += per_client
        plan.append(part)
    return plan
