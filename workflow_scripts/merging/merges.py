"""Merging several clients' edits of one weight matrix: small pure functions on float64 tensors.

Notation (editing-merging.md §8): one edited matrix (out × in); N clients; client i has keys K_i
(d_k × n_i) and residual shares R_i (d × n_i) measured on the same start model (frozen MEMIT); the
prior P = λC (single round) or the running state P_t (multi-round). Client i's own MEMIT edit is
Δ_i = R_i K_iᵀ (P + S_i)⁻¹ with S_i = K_i K_iᵀ.

- :func:`global_delta`: one MEMIT solve on the union, R Kᵀ (P + K Kᵀ)⁻¹ (the upper bound, "GLOBAL").
- :func:`simple_average`: (1/N) Σ Δ_i. (CollabEdit's code divides by a hard-coded 10 whatever N is.)
- :func:`task_arithmetic`: τ Σ Δ_i.
- :func:`ties`: per client keep the largest ``keep`` share of entries by magnitude (:func:`trim`),
  elect each entry's sign from the summed trimmed deltas (:func:`elect_sign`), average the clients
  that agree with it (:func:`disjoint_mean`), scale. (CollabEdit's code applies client 0's delta
  alone: ``vector_to_parameters`` into a 2-D tensor writes nothing, bug B1; tested against here.)
- :func:`collabedit`: the server sees (Δ_i, S_i) only and returns [Σ Δ_i (P + S_i)] (P + Σ S_i)⁻¹,
  which equals :func:`global_delta` because Δ_i (P + S_i) = R_i K_iᵀ.

Every solve is ``solve`` of a symmetric positive-definite matrix, never an explicit inverse.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

Tensor = torch.Tensor


def _f64(x: Tensor) -> Tensor:
    return x.to(torch.float64)


def gram(keys: Tensor) -> Tensor:
    """S = K Kᵀ (d_k × d_k) of keys K (d_k × n)."""
    k = _f64(keys)
    return k @ k.T


def right_solve(x: Tensor, a: Tensor) -> Tensor:
    """X A⁻¹ for a symmetric A, formed as solve(A, Xᵀ)ᵀ."""
    return torch.linalg.solve(_f64(a), _f64(x).T).T


def client_delta(keys: Tensor, resids: Tensor, prior: Tensor) -> Tensor:
    """One client's MEMIT edit Δ_i = R_i K_iᵀ (P + K_i K_iᵀ)⁻¹ (out × in)."""
    k = _f64(keys)
    return right_solve(_f64(resids) @ k.T, _f64(prior) + k @ k.T)


def global_delta(keys: Sequence[Tensor], resids: Sequence[Tensor], prior: Tensor) -> Tensor:
    """GLOBAL: one MEMIT solve on the union of the clients' edits, R Kᵀ (P + K Kᵀ)⁻¹."""
    _check_clients(keys, resids)
    return client_delta(torch.cat([_f64(k) for k in keys], 1), torch.cat([_f64(r) for r in resids], 1), prior)


def simple_average(deltas: Sequence[Tensor]) -> Tensor:
    """SA: (1/N) Σ Δ_i."""
    _check_deltas(deltas)
    return torch.stack([_f64(d) for d in deltas]).mean(0)


def task_arithmetic(deltas: Sequence[Tensor], scale: float = 1.0) -> Tensor:
    """TA: τ Σ Δ_i."""
    _check_deltas(deltas)
    return float(scale) * torch.stack([_f64(d) for d in deltas]).sum(0)


def trim(delta: Tensor, keep: float) -> Tensor:
    """TIES step 1: ``delta`` with all but its ceil(keep · numel) largest-magnitude entries set to 0
    (entries tied with the smallest kept magnitude are kept too)."""
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    d = _f64(delta)
    n = d.numel()
    kept = max(1, math.ceil(keep * n))
    if kept >= n:
        return d.clone()
    threshold = d.abs().flatten().kthvalue(n - kept + 1).values
    return torch.where(d.abs() >= threshold, d, torch.zeros_like(d))


def elect_sign(trimmed: Sequence[Tensor]) -> Tensor:
    """TIES step 2: each entry's sign is the sign of the summed trimmed deltas ("mass"); entries
    whose sum is 0 take the majority sign over all entries (+1 when that is 0 too)."""
    total = torch.stack([_f64(t) for t in trimmed]).sum(0)
    sign = torch.sign(total)
    majority = torch.sign(sign.sum())
    return torch.where(sign == 0, majority if majority != 0 else torch.ones_like(majority), sign)


def disjoint_mean(trimmed: Sequence[Tensor], sign: Tensor) -> Tensor:
    """TIES step 3: per entry, the mean over the clients whose trimmed entry is non-zero and has the
    elected sign (0 where none does)."""
    stack = torch.stack([_f64(t) for t in trimmed])
    agree = (stack != 0) & (torch.sign(stack) == sign)
    count = agree.sum(0)
    return torch.where(count > 0, (stack * agree).sum(0) / count.clamp_min(1), torch.zeros_like(stack[0]))


def ties(deltas: Sequence[Tensor], keep: float = 0.2, scale: float = 0.4) -> Tensor:
    """TIES-merging: scale · disjoint_mean(trim each, elected sign)."""
    _check_deltas(deltas)
    trimmed = [trim(d, keep) for d in deltas]
    return float(scale) * disjoint_mean(trimmed, elect_sign(trimmed))


def collabedit(deltas: Sequence[Tensor], grams: Sequence[Tensor], prior: Tensor) -> Tensor:
    """CollabEdit: [Σ_i Δ_i (P + S_i)] (P + Σ_i S_i)⁻¹ from each client's delta and Gram matrix."""
    _check_deltas(deltas)
    if len(grams) != len(deltas):
        raise ValueError(f"{len(deltas)} deltas but {len(grams)} Gram matrices")
    p = _f64(prior)
    numerator = sum(_f64(d) @ (p + _f64(s)) for d, s in zip(deltas, grams))
    return right_solve(numerator, p + sum(_f64(s) for s in grams))


def _check_deltas(deltas: Sequence[Tensor]) -> None:
    if not deltas:
        raise ValueError("no client deltas to merge")
    shapes = {tuple(d.shape) for d in deltas}
    if len(shapes) != 1:
        raise ValueError(f"client deltas differ in shape: {sorted(shapes)}")


def _check_clients(keys: Sequence[Tensor], resids: Sequence[Tensor]) -> None:
    if not keys or len(keys) != len(resids):
        raise ValueError(f"need one key and one residual matrix per client, got {len(keys)} and {len(resids)}")
    for k, r in zip(keys, resids):
        if k.shape[1] != r.shape[1]:
            raise ValueError(f"a client has {k.shape[1]} keys but {r.shape[1]} residuals")


# rule name -> merge(keys, resids, prior, settings) for one matrix; every rule sees the same inputs,
# and all but "global" use only what a client would send (its delta, and for CollabEdit its Gram matrix).
MergeRule = Callable[[Sequence[Tensor], Sequence[Tensor], Tensor, dict], Tensor]


def _from_clients(keys, resids, prior) -> list[Tensor]:
    _check_clients(keys, resids)
    return [client_delta(k, r, prior) for k, r in zip(keys, resids)]


RULES: dict[str, MergeRule] = {
    "global": lambda keys, resids, prior, s: global_delta(keys, resids, prior),
    "sa": lambda keys, resids, prior, s: simple_average(_from_clients(keys, resids, prior)),
    "ta": lambda keys, resids, prior, s: task_arithmetic(_from_clients(keys, resids, prior), s.get("ta_scale", 1.0)),
    "ties": lambda keys, resids, prior, s: ties(_from_clients(keys, resids, prior), s.get("ties_keep", 0.2),
                                                s.get("ties_scale", 0.4)),
    "collabedit": lambda keys, resids, prior, s: collabedit(_from_clients(keys, resids, prior),
                                                            [gram(k) for k in keys], prior),
}


def merge(rule: str, keys: Sequence[Tensor], resids: Sequence[Tensor], prior: Tensor, settings: dict | None = None) -> Tensor:
    """The merged delta of one matrix under ``rule`` (one of :data:`RULES`)."""
    if rule not in RULES:
        raise ValueError(f"unknown merge rule {rule!r}; known: {sorted(RULES)}")
    return RULES[rule](keys, resids, prior, dict(settings or {}))
