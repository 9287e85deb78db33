"""ROME: a rank-one update of one MLP output projection (Meng et al. 2022), from its equations.

For an edit with template-mean key k̄, bare-prompt key k_b and target value v* (``targets``, site
"mlp"):

    u = C⁻¹ k̄                           (``mom2_adjustment``; solved in float64, never inverted)
    Δ = (v* − W k_r) uᵀ / (uᵀ k_r)        (out × in), k_r = k_b ("original") or k̄ ("homogeneous", r-ROME)

so that the edited weight maps k_r exactly to v*: (W + Δ) k_r = v*. ``original`` is the reference's
asymmetric form (k̄ in u, k_b in the residual and denominator); ``homogeneous`` uses k̄ throughout
(Gupta et al. 2024), which avoids the disabling edits of sequential ROME.

Many edits are applied one after another, each on the already-edited weight (cumulative, like
``apply_rome_to_model``). Keys never change between them: only this layer's output projection is
edited, and the key is its *input*. Deviation (``batch_targets``, default): every v* is optimised in
one batch on the start model, rather than each on the model the previous edits left; ``batch_targets
= False`` recomputes v* before each edit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from workflow_scripts.editing.hparams import RomeHParams
from workflow_scripts.editing.keys import subject_keys
from workflow_scripts.editing.requests import EditRequest
from workflow_scripts.editing.site import edit_site
from workflow_scripts.editing.targets import TargetResult, optimise_targets
from workflow_scripts.editing.templates import check_templates


@dataclass
class RomeResult:
    layer: int
    weight_name: str
    deltas: list[torch.Tensor]  # per edit, (out × in) float64, in the order applied
    key_mean: torch.Tensor  # (n, d_k)
    key_bare: torch.Tensor  # (n, d_k)
    values: torch.Tensor  # (n, d) v* per edit
    targets: list[TargetResult]
    stats: dict = field(default_factory=dict)


def rome_update(weight: torch.Tensor, cov: torch.Tensor | None, key_u: torch.Tensor, key_ref: torch.Tensor,
                value: torch.Tensor) -> torch.Tensor:
    """The rank-one Δ (out × in, float64) with (W + Δ) key_ref = value; u = C⁻¹ key_u (u = key_u
    without a covariance)."""
    w = weight.to(torch.float64)
    k_u, k_r, v = key_u.to(torch.float64), key_ref.to(torch.float64), value.to(torch.float64)
    u = torch.linalg.solve(cov.to(torch.float64), k_u) if cov is not None else k_u
    denom = u @ k_r
    if not torch.isfinite(denom) or denom.abs() < 1e-30:
        raise ValueError(f"ROME: uᵀk = {float(denom):.3g}; the key is (numerically) orthogonal to C⁻¹k")
    return torch.outer(v - w @ k_r, u) / denom


def apply_rome(model: nn.Module, tokenizer, requests: Sequence[EditRequest], hp: RomeHParams,
               cov: torch.Tensor | None, templates: Sequence[str]) -> RomeResult:
    """Apply ROME for every request, in order, to the model's weights (in place)."""
    if hp.mom2_adjustment and cov is None:
        raise ValueError("ROME with mom2_adjustment needs the layer's covariance C")
    templates = check_templates(templates)
    site = edit_site(model, hp.layer)
    start = time.perf_counter()
    key_mean, key_bare = (d[hp.layer] for d in subject_keys(model, tokenizer, requests, [hp.layer], templates))
    key_seconds = time.perf_counter() - start
    targets: list[TargetResult] = []
    if hp.batch_targets:
        targets.append(optimise_targets(model, tokenizer, requests, hp.layer, "mlp", hp.targets, templates))
    deltas, values, relerr, resid = [], [], [], []
    for j, request in enumerate(requests):
        if hp.batch_targets:
            value = targets[0].values[j]
        else:
            targets.append(optimise_targets(model, tokenizer, [request], hp.layer, "mlp", hp.targets, templates))
            value = targets[-1].values[0]
        k_ref = key_bare[j] if hp.key == "original" else key_mean[j]
        w = site.matrix()
        delta = rome_update(w, cov if hp.mom2_adjustment else None, key_mean[j], k_ref, value)
        site.apply(delta)
        after = site.matrix() @ k_ref.double()
        relerr.append(float((after - value.double()).norm() / value.double().norm()))
        resid.append(float((value.double() - w @ k_ref.double()).norm()))
        deltas.append(delta)
        values.append(value)
    seconds = time.perf_counter() - start
    target_stats = [t.stats for t in targets]
    stats = {
        "edits": len(requests), "layer": hp.layer, "key": hp.key, "templates": len(templates),
        "key_seconds": key_seconds, "seconds": seconds,
        "clamp_hits": sum(s["clamp_hits"] for s in target_stats),
        "z_updates_mean": float(torch.cat([t.updates for t in targets]).float().mean()),
        "z_loss_mean": float(torch.cat([t.loss for t in targets]).mean()),
        "map_error_max": max(relerr), "residual_norm_mean": sum(resid) / len(resid),
        "delta_norm_mean": float(torch.stack([d.norm() for d in deltas]).mean()),
    }
    return RomeResult(hp.layer, site.weight_name, deltas, key_mean, key_bare, torch.stack(values), targets, stats)
