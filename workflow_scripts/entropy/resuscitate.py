"""Resuscitation: amplify the neurons a model uses least, once, before continual training.

Per layer, with c̄ the average |coefficient| of each of its m neurons measured on some texts
(:func:`~workflow_scripts.entropy.coefficients.average_coefficients`):

    t = quantile(c̄, p)                      (linear interpolation)
    selected = {i : c̄_i ≤ t}                 (ties at t select more than a fraction p)
    u_i = min(q · mean(c̄) / (c̄_i + eps), max_factor)     for i in selected
    up_proj row i  ←  u_i · row i            (and its bias entry, when there is one)

In a gated MLP ``c = act_fn(gate(h)) * up(h)``, so row i of the up projection enters coefficient i
linearly and only there: scaling it scales c_i by u_i at every token, leaving the gate, the output
projection and every other neuron of the layer as they were. On the texts c̄ was measured on, each
selected neuron's average becomes ``q · mean(c̄)`` (up to ``eps``, unless clamped), and layer 0's
unselected neurons keep theirs (later layers see a changed residual stream).

The seed's factor ``mean(c̄) / c̄_i · q`` is unbounded (spec B.4.3): a dead neuron gets an infinite
factor and a zero row becomes NaN. Here ``eps`` keeps it finite and ``max_factor`` clamps it; the
report counts the clamped neurons. ``p = 0`` selects nothing (a no-op). The mean includes the
neurons being amplified, as in the seed.

GPT-2's MLP ``gelu(c_fc h)`` has no linear "up" half (scaling a ``c_fc`` column does not scale the
coefficient), so it is refused with a ValueError.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from workflow_scripts.models.architectures import blocks, mlp_up_module_name, output_width, weight_is_transposed

__all__ = ["resuscitation_factors", "resuscitate"]


def resuscitation_factors(cbar: torch.Tensor, ratio: float, q: float = 2.0, eps: float = 1e-8,
                          max_factor: float = 100.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For one layer's c̄ (m,): (selected mask, factor per neuron (1 where unselected), clamped mask),
    float64 factors. See the module docstring for the rule."""
    c = torch.as_tensor(cbar, dtype=torch.float64)
    if c.dim() != 1 or c.numel() == 0:
        raise ValueError(f"one layer's cbar must be a non-empty vector, got shape {tuple(c.shape)}")
    if not torch.isfinite(c).all() or (c < 0).any():
        raise ValueError("cbar must be finite and non-negative (averages of |coefficient|)")
    ones = torch.ones_like(c)
    if ratio == 0:
        none = torch.zeros_like(c, dtype=torch.bool)
        return none, ones, none
    selected = c <= torch.quantile(c, float(ratio))
    raw = q * c.mean() / (c + eps)
    clamped = selected & (raw > max_factor)
    factors = torch.where(selected, torch.clamp(raw, max=max_factor), ones)
    return selected, factors, clamped


def resuscitate(model: nn.Module, cbar: torch.Tensor | np.ndarray | Sequence, ratio: float = 0.5,
                q: float = 2.0, eps: float = 1e-8, max_factor: float = 100.0) -> dict:
    """Scale, in place, the up-projection rows of each layer's least-used neurons (module docstring).

    ``cbar`` is (n_layers, m): the average |coefficient| per layer and neuron, measured on this model.
    Only the ``mlp_up`` modules change. Returns a JSON-ready report: the settings, the numbers of
    selected and clamped neurons in all, and per layer the module, the threshold, mean(c̄), the counts
    and the largest factor applied. Raises ValueError for an architecture without a linear up
    projection (GPT-2) or a ``cbar`` that does not fit the model.
    """
    if not 0 <= ratio <= 1:
        raise ValueError(f"ratio must lie in [0, 1], got {ratio}")
    if not (q > 0 and eps > 0 and max_factor > 0):
        raise ValueError(f"q, eps and max_factor must be positive, got {q}, {eps}, {max_factor}")
    n_layers = len(blocks(model))
    names = [mlp_up_module_name(model, layer) for layer in range(n_layers)]  # raises for GPT-2
    modules = [model.get_submodule(name) for name in names]
    c = torch.as_tensor(cbar, dtype=torch.float64)
    widths = [output_width(module) for module in modules]
    if c.dim() != 2 or c.shape[0] != n_layers or any(c.shape[1] != w for w in widths):
        raise ValueError(f"cbar of shape {tuple(c.shape)} does not fit {n_layers} layers of widths "
                         f"{sorted(set(widths))}")

    layers = []
    with torch.no_grad():
        for layer, (name, module) in enumerate(zip(names, modules)):
            selected, factors, clamped = resuscitation_factors(c[layer], ratio, q, eps, max_factor)
            idx = torch.nonzero(selected).flatten()
            if len(idx):
                weight = module.weight
                scale = factors[idx].to(device=weight.device, dtype=weight.dtype)
                idx_dev = idx.to(weight.device)
                if weight_is_transposed(module):
                    weight[:, idx_dev] *= scale[None, :]
                else:
                    weight[idx_dev, :] *= scale[:, None]
                bias = getattr(module, "bias", None)
                if bias is not None:
                    bias[idx_dev] *= scale
            layers.append({
                "layer": layer,
                "module": name,
                "width": int(c.shape[1]),
                "threshold": float(torch.quantile(c[layer], float(ratio))) if ratio > 0 else None,
                "mean": float(c[layer].mean()),
                "selected": int(selected.sum()),
                "clamped": int(clamped.sum()),
                "max_factor_applied": float(factors[idx].max()) if len(idx) else None,
            })
    return {
        "ratio": float(ratio),
        "q": float(q),
        "eps": float(eps),
        "max_factor": float(max_factor),
        "selected": sum(entry["selected"] for entry in layers),
        "clamped": sum(entry["clamped"] for entry in layers),
        "layers": layers,
    }
