"""MEMIT: many edits written over a window of layers (Meng et al. 2023), from its equations.

Notation: edited layers l_1 < … < l_E; n edits; K_l (d_k × n) the template-mean keys at layer l; z*
(d × n) the target residual stream after block l_E (``targets``, site "block"); C_l = E[k kᵀ]; λ.

- ``sequential`` (the reference, kmeng01/memit): for i = 1…E, on the *current* model, measure K_{l_i}
  and R = z* − h_{l_E}(bare prompts); write Δ_i = (R/(E−i+1)) K_iᵀ (λC_i + K_iK_iᵀ)⁻¹ before the next
  layer is measured.
- ``frozen`` (LINs-lab/CollabEdit): all K_l and R = z* − h_{l_E} are measured once on the *unedited*
  model; the share R_i at layer i is R/(E−i+1) ("remaining", CollabEdit's rule: the shares sum to the
  harmonic number H_E) or R/E ("equal"). Each Δ_i then depends only on (K_i, R_i, C_i, λ), which is
  what makes merges of several clients' edits exact; the per-layer K, R and Δ are returned for them.

Both modes agree on the first layer. Every Δ is formed as ``R @ solve(λC + KKᵀ, K)ᵀ`` in float64.

λ: a number, or "auto": per layer, λ = median over a *fixed* calibration key set of kᵀC⁻¹k, divided
by ``s_target`` (§1.7), so that the median s = kᵀ(λC)⁻¹k equals ``s_target``: one edit then writes
s/(1+s) of its residual share (a half at s = 1). The calibration set is never the batch being edited
(by default the first 64 starter facts), so every client and the global edit share one λ.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
from torch import nn

from workflow_scripts.editing.hparams import MemitHParams
from workflow_scripts.editing.keys import subject_keys, subject_keys_and_hidden
from workflow_scripts.editing.requests import EditRequest
from workflow_scripts.editing.site import edit_site
from workflow_scripts.editing.targets import TargetResult, optimise_targets
from workflow_scripts.editing.templates import check_templates


@dataclass
class MemitResult:
    layers: tuple[int, ...]
    mode: str
    deltas: dict[int, torch.Tensor]  # layer -> Δ (out × in), float64
    keys: dict[int, torch.Tensor]  # layer -> K (d_k × n), float64
    resids: dict[int, torch.Tensor]  # layer -> R_l (d × n), the residual share written at that layer
    residual: torch.Tensor  # (d × n) z* − h_L on the unedited model
    lambdas: dict[int, float]
    weight_names: dict[int, str]
    targets: TargetResult
    stats: dict = field(default_factory=dict)


def memit_delta(keys: torch.Tensor, resid: torch.Tensor, cov: torch.Tensor, lam: float) -> torch.Tensor:
    """Δ = R Kᵀ (λC + KKᵀ)⁻¹ (out × in, float64), formed as R · solve(λC + KKᵀ, K)ᵀ."""
    k, r = keys.to(torch.float64), resid.to(torch.float64)
    a = lam * cov.to(torch.float64) + k @ k.T
    return r @ torch.linalg.solve(a, k).T


def quadratic_forms(keys: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """kᵀ C⁻¹ k for every column k of ``keys`` (d_k × n)."""
    k = keys.to(torch.float64)
    return (k * torch.linalg.solve(cov.to(torch.float64), k)).sum(0)


def calibrate_lambda(model: nn.Module, tokenizer, layers: Sequence[int], covs: Mapping[int, torch.Tensor],
                     requests: Sequence[EditRequest], templates: Sequence[str], s_target: float = 1.0
                     ) -> dict[int, dict[str, float]]:
    """{layer: {"lambda", "median_q", "s_target", "n"}}: λ_l = median_k(kᵀC_l⁻¹k) / s_target over the
    template-mean keys of ``requests`` (a fixed calibration set)."""
    if not requests:
        raise ValueError("no calibration requests")
    means, _ = subject_keys(model, tokenizer, requests, layers, check_templates(templates))
    out = {}
    for layer in layers:
        q = quadratic_forms(means[layer].T, covs[layer])
        median = float(q.median())
        out[int(layer)] = {"lambda": median / s_target, "median_q": median, "s_target": float(s_target),
                           "n": len(requests)}
    return out


def default_calibration_requests(n: int = 64) -> list[EditRequest]:
    """The first ``n`` starter facts (subject-bearing prompts), a fixed set for λ calibration."""
    from workflow_scripts.facts.schema import flat_facts
    from workflow_scripts.facts.starter import starter_records
    from workflow_scripts.editing.requests import requests_from_facts

    return requests_from_facts(flat_facts(starter_records()[:n]), "target_true")


def apply_memit(model: nn.Module, tokenizer, requests: Sequence[EditRequest], hp: MemitHParams,
                covs: Mapping[int, torch.Tensor], templates: Sequence[str],
                calibration: Sequence[EditRequest] | None = None, write: bool = True) -> MemitResult:
    """Edit the model with MEMIT (in place unless ``write`` is False: the frozen mode then only
    computes, the sequential mode writes layer by layer and restores the weights at the end)."""
    templates = check_templates(templates)
    layers = hp.layers
    sites = {layer: edit_site(model, layer) for layer in layers}
    missing = [layer for layer in layers if layer not in covs]
    if missing:
        raise ValueError(f"MEMIT needs the covariance of layers {missing}")
    start = time.perf_counter()
    calib = {}
    if hp.lambda_ == "auto":
        calib = calibrate_lambda(model, tokenizer, layers, covs,
                                 calibration if calibration is not None else default_calibration_requests(hp.calibration_facts),
                                 templates, hp.s_target)
        lambdas = {layer: calib[layer]["lambda"] for layer in layers}
    else:
        lambdas = {layer: float(hp.lambda_) for layer in layers}
    calib_seconds = time.perf_counter() - start
    last = layers[-1]
    targets = optimise_targets(model, tokenizer, requests, last, "block", hp.targets, templates)
    z = targets.values.to(torch.float64).T  # (d, n)
    target_seconds = time.perf_counter() - start - calib_seconds
    n_layers = len(layers)
    deltas, keys, resids, layer_stats = {}, {}, {}, {}
    before = {layer: sites[layer].weight.detach().clone() for layer in layers} if not write else None
    residual = None
    if hp.mode == "frozen":
        frozen_keys, h_last = subject_keys_and_hidden(model, tokenizer, requests, layers, last, templates)
        residual = z - h_last.to(torch.float64).T
    for i, layer in enumerate(layers):
        if hp.mode == "sequential":
            current_keys, h_last = subject_keys_and_hidden(model, tokenizer, requests, [layer], last, templates)
            k_mean = current_keys[layer]
            r = z - h_last.to(torch.float64).T
            if residual is None:
                residual = r
            share = r / (n_layers - i)
        else:
            k_mean = frozen_keys[layer]
            share = residual / (n_layers - i) if hp.residual_split == "remaining" else residual / n_layers
        k = k_mean.to(torch.float64).T  # (d_k, n)
        delta = memit_delta(k, share, covs[layer], lambdas[layer])
        deltas[layer], keys[layer], resids[layer] = delta, k, share
        s = quadratic_forms(k, covs[layer]) / lambdas[layer]
        achieved = ((delta @ k - share).norm(dim=0) / share.norm(dim=0).clamp_min(1e-30))
        layer_stats[layer] = {"lambda": lambdas[layer], "s_median": float(s.median()),
                              "write_error_median": float(achieved.median()),
                              "resid_norm_mean": float(share.norm(dim=0).mean()), "delta_norm": float(delta.norm())}
        if hp.mode == "sequential":
            sites[layer].apply(delta)
    if hp.mode == "frozen" and write:
        for layer in layers:
            sites[layer].apply(deltas[layer])
    if before is not None:
        with torch.no_grad():
            for layer in layers:
                sites[layer].weight.copy_(before[layer])
    subjects = Counter(r.subject for r in requests)
    stats = {
        "edits": len(requests), "layers": list(layers), "mode": hp.mode, "templates": len(templates),
        "lambda_auto": hp.lambda_ == "auto", "calibration": {str(k): v for k, v in calib.items()},
        "per_layer": {str(k): v for k, v in layer_stats.items()},
        "s_median": float(torch.tensor([v["s_median"] for v in layer_stats.values()]).median()),
        "lambda_mean": sum(lambdas.values()) / len(lambdas),
        "clamp_hits": targets.stats["clamp_hits"], "z_updates_mean": targets.stats["updates_mean"],
        "z_loss_mean": float(targets.loss.mean()), "n_same_subject": sum(c for c in subjects.values() if c > 1),
        "calibration_seconds": calib_seconds, "target_seconds": target_seconds,
        "seconds": time.perf_counter() - start,
    }
    return MemitResult(tuple(layers), hp.mode, deltas, keys, resids, residual, lambdas,
                       {layer: sites[layer].weight_name for layer in layers}, targets, stats)
