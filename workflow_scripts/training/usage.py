"""Per-neuron usage: gradients of the loss with respect to each linear module's outputs.

A neuron is one output unit of a tracked linear module (see ``models.architectures``). While
training, usage accumulates the gradient at the positions that predict answer tokens only (never
prompt or padding positions). Three scores are kept: ``abs_sum`` = |Σg| (the original study's),
``sum_abs`` = Σ|g| and ``sum_sq`` = Σg².
"""

from __future__ import annotations

import os

import torch
from safetensors.torch import load_file, save_file

from workflow_scripts.io import atomic_path
from workflow_scripts.models.architectures import linear_modules
from workflow_scripts.models.hooks import Trace

SCORES = ("abs_sum", "sum_abs", "sum_sq")


class UsageTracker:
    """Accumulates per-neuron gradient statistics over answer positions while it is attached.

    ``positions`` must be set to a boolean (batch, seq) tensor marking the positions whose output
    predicts an answer token before each forward and backward pass; forward passes while it is None
    are not counted. The gradients come from a :class:`~workflow_scripts.models.hooks.Trace` over
    the architecture map's linear modules (``modules``). Entering an attached tracker again (a
    ``with`` block around a run whose ``RecordUsage`` plugin also attaches it) nests: the hooks stay
    single and are removed when the outermost attachment ends.
    """

    def __init__(self, model):
        self.modules = linear_modules(model)
        self.sum = {m.name: torch.zeros(m.out_features, dtype=torch.float64) for m in self.modules}
        self.sum_abs = {m.name: torch.zeros(m.out_features, dtype=torch.float64) for m in self.modules}
        self.sum_sq = {m.name: torch.zeros(m.out_features, dtype=torch.float64) for m in self.modules}
        self.positions: torch.Tensor | None = None
        self.tokens = 0
        self._trace = Trace(model, self.modules, retain_output=False, on_output_grad=self._accumulate,
                            active=lambda: self.positions is not None)
        self._depth = 0

    def __enter__(self):
        if self._depth == 0:
            self._trace.__enter__()
        self._depth += 1
        return self

    def __exit__(self, *exc):
        self._depth = max(0, self._depth - 1)
        if self._depth == 0:
            self._trace.__exit__(*exc)

    def _accumulate(self, name: str, grad: torch.Tensor) -> None:
        g = grad[self.positions].detach().double().cpu()  # (answer positions, out_features)
        self.sum[name] += g.sum(0)
        self.sum_abs[name] += g.abs().sum(0)
        self.sum_sq[name] += (g * g).sum(0)

    def scores(self) -> dict[str, dict[str, torch.Tensor]]:
        """score name -> module name -> per-neuron score (float32)."""
        return {
            "abs_sum": {k: v.abs().float() for k, v in self.sum.items()},
            "sum_abs": {k: v.float() for k, v in self.sum_abs.items()},
            "sum_sq": {k: v.float() for k, v in self.sum_sq.items()},
        }


def save_usage(scores: dict[str, dict[str, torch.Tensor]], dest: str | os.PathLike, meta: dict | None = None) -> None:
    """One safetensors file; tensor names are ``<score>/<module name>``."""
    flat = {f"{score}/{name}": t.contiguous() for score, per in scores.items() for name, t in per.items()}
    with atomic_path(dest) as tmp:
        save_file(flat, str(tmp), metadata={k: str(v) for k, v in (meta or {}).items()})


def load_usage(path: str | os.PathLike, score: str = "abs_sum") -> dict[str, torch.Tensor]:
    if score not in SCORES:
        raise ValueError(f"unknown usage score {score!r}; use one of {SCORES}")
    flat = load_file(str(path))
    return {k.split("/", 1)[1]: v for k, v in flat.items() if k.startswith(f"{score}/")}
