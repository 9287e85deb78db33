"""From a neuron mask (module -> which output units may change) to per-parameter update masks.

A neuron is one output unit of a tracked linear module: its row of weights (nn.Linear stores
(out, in); GPT-2's Conv1D stores (in, out), so there it is a column) and its bias entry. In targeted
arms only tracked modules train; embeddings, norms and the LM head stay frozen.
"""

from __future__ import annotations

import torch

from workflow_scripts.models.architectures import linear_modules, weight_is_transposed


def parameter_masks(model, neuron_mask: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Parameter name -> boolean tensor broadcastable to the parameter (True = may change)."""
    masks = {}
    for m in linear_modules(model):
        if m.name not in neuron_mask:
            raise ValueError(f"neuron mask has no entry for module {m.name}")
        keep = neuron_mask[m.name].to(torch.bool)
        if keep.shape != (m.out_features,):
            raise ValueError(f"mask for {m.name} has shape {tuple(keep.shape)}, expected ({m.out_features},)")
        masks[f"{m.name}.weight"] = keep[None, :] if weight_is_transposed(m.module) else keep[:, None]
        if getattr(m.module, "bias", None) is not None:
            masks[f"{m.name}.bias"] = keep
    return masks


def tracked_parameter_names(model) -> set[str]:
    names = set()
    for m in linear_modules(model):
        names.add(f"{m.name}.weight")
        if getattr(m.module, "bias", None) is not None:
            names.add(f"{m.name}.bias")
    return names
