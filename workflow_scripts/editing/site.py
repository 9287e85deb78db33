"""The edit site of a block, resolved through the architecture map.

An editor changes one module per edited layer: the MLP output projection (``mlp.down_proj`` in
llama-style models, the transposed ``Conv1D`` ``mlp.c_proj`` in GPT-2). Its input is the key k
(width ``key_width``), its output the value it writes (width ``out_width`` = the residual width).
Every method computes Δ as an (out × in) matrix; :meth:`EditSite.apply` adds it in the module's own
orientation (``W += Δ`` for ``nn.Linear``, ``W += Δᵀ`` for ``Conv1D``), never by guessing from shapes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from workflow_scripts.models.architectures import (block_name, blocks, edit_module_name, input_width,
                                                    mlp_module_name, output_width, weight_is_transposed)


@dataclass(frozen=True)
class EditSite:
    layer: int
    name: str  # full dotted name of the edited module
    module: nn.Module
    transposed: bool  # weight stored (in × out), GPT-2's Conv1D
    key_width: int  # d_k: the module's input width
    out_width: int  # the module's output width (= the residual width)
    block: str  # full dotted name of the block (its output is the residual stream)
    mlp: str  # full dotted name of the block's MLP

    @property
    def weight(self) -> nn.Parameter:
        return self.module.weight

    @property
    def weight_name(self) -> str:
        return f"{self.name}.weight"

    def matrix(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """A copy of the weight as (out × in)."""
        w = self.weight.detach()
        return (w.T if self.transposed else w).to(dtype=dtype, copy=True)

    def to_weight_layout(self, delta: torch.Tensor) -> torch.Tensor:
        """An (out × in) matrix in the weight's own layout, dtype and device."""
        if tuple(delta.shape) != (self.out_width, self.key_width):
            raise ValueError(f"{self.name}: Δ has shape {tuple(delta.shape)}, expected (out, in) = "
                             f"({self.out_width}, {self.key_width})")
        d = delta.T if self.transposed else delta
        return d.to(dtype=self.weight.dtype, device=self.weight.device)

    @torch.no_grad()
    def apply(self, delta: torch.Tensor) -> None:
        """Add an (out × in) update to the weight in place."""
        self.weight.add_(self.to_weight_layout(delta))


def n_blocks(model: nn.Module) -> int:
    return len(blocks(model))


def edit_site(model: nn.Module, layer: int) -> EditSite:
    n = n_blocks(model)
    if not 0 <= int(layer) < n:
        raise ValueError(f"edit layer {layer} is outside the model's {n} blocks (0..{n - 1})")
    layer = int(layer)
    name = edit_module_name(model, layer)
    module = model.get_submodule(name)
    return EditSite(layer=layer, name=name, module=module, transposed=weight_is_transposed(module),
                    key_width=input_width(module), out_width=output_width(module),
                    block=block_name(model, layer), mlp=mlp_module_name(model, layer))


def edit_sites(model: nn.Module, layers: Iterable[int]) -> list[EditSite]:
    layers = list(layers)
    if len(set(layers)) != len(layers):
        raise ValueError(f"edit layers repeat: {layers}")
    return [edit_site(model, layer) for layer in layers]
