"""Per-neuron usage: gradients of the loss with respect to each linear module's outputs.

A neuron is one output unit of a tracked linear module (see ``models.architectures``). While
training, usage accumulates the output gradient over two sets of positions at once:

- ``all_real``: every real (non-padding) position of a fact, prompt included: the original study's
  choice (it summed over every position) minus its bug of counting padding. A neuron's weight
  update sums its gradient over all these positions, so this ranks neurons by how hard training
  pushes them. The default (``updates.usage_positions``).
- ``answer``: only the positions whose next token is an answer token (where the loss is taken).

Three scores are kept for each: ``abs_sum`` = |Σg| (the original study's), ``sum_abs`` = Σ|g| and
``sum_sq`` = Σg². A usage file holds every (positions, score) pair as ``<positions>/<score>/<module>``.
"""

from __future__ import annotations

import os

import torch
from safetensors.torch import load_file, save_file

from workflow_scripts.io import atomic_path
from workflow_scripts.models.architectures import linear_modules
from workflow_scripts.models.hooks import Trace

SCORES = ("abs_sum", "sum_abs", "sum_sq")
POSITIONS = ("all_real", "answer")


class UsageTracker:
    """Accumulates per-neuron gradient statistics while it is attached.

    ``positions`` must be set before each forward and backward pass to a mapping from a position set
    (:data:`POSITIONS`) to a boolean (batch, seq) tensor marking its positions; forward passes while
    it is None are not counted. The gradients come from a :class:`~workflow_scripts.models.hooks.Trace`
    over the architecture map's linear modules (``modules``). Entering an attached tracker again (a
    ``with`` block around a run whose ``RecordUsage`` plugin also attaches it) nests: the hooks stay
    single and are removed when the outermost attachment ends.
    """

    def __init__(self, model):
        self.modules = linear_modules(model)

        def zeros():
            return {m.name: torch.zeros(m.out_features, dtype=torch.float64) for m in self.modules}

        # position set -> statistic ("sum", "sum_abs", "sum_sq") -> module -> per-neuron float64
        self.stats = {kind: {"sum": zeros(), "sum_abs": zeros(), "sum_sq": zeros()} for kind in POSITIONS}
        self.positions: dict[str, torch.Tensor] | None = None
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

    def tensors(self) -> list[torch.Tensor]:
        """Every accumulator (to sum them across processes)."""
        return [t for per in self.stats.values() for stat in per.values() for t in stat.values()]

    def _accumulate(self, name: str, grad: torch.Tensor) -> None:
        unknown = set(self.positions) - set(POSITIONS)
        if unknown:
            raise ValueError(f"unknown usage position sets {sorted(unknown)}; known: {POSITIONS}")
        for kind, where in self.positions.items():
            g = grad[where].detach().double().cpu()  # (positions, out_features)
            stats = self.stats[kind]
            stats["sum"][name] += g.sum(0)
            stats["sum_abs"][name] += g.abs().sum(0)
            stats["sum_sq"][name] += (g * g).sum(0)

    def scores(self) -> dict[str, dict[str, dict[str, torch.Tensor]]]:
        """position set -> score name -> module name -> per-neuron score (float32)."""
        return {kind: {"abs_sum": {k: v.abs().float() for k, v in st["sum"].items()},
                       "sum_abs": {k: v.float() for k, v in st["sum_abs"].items()},
                       "sum_sq": {k: v.float() for k, v in st["sum_sq"].items()}}
                for kind, st in self.stats.items()}


def save_usage(scores: dict[str, dict[str, dict[str, torch.Tensor]]], dest: str | os.PathLike,
               meta: dict | None = None) -> None:
    """One safetensors file of ``scores`` (position set -> score -> module -> tensor); tensor names
    are ``<positions>/<score>/<module name>``."""
    flat = {f"{kind}/{score}/{name}": t.contiguous()
            for kind, per_score in scores.items() for score, per in per_score.items() for name, t in per.items()}
    with atomic_path(dest) as tmp:
        save_file(flat, str(tmp), metadata={k: str(v) for k, v in (meta or {}).items()})


def load_usage(path: str | os.PathLike, score: str = "abs_sum", positions: str = "all_real") -> dict[str, torch.Tensor]:
    """module name -> per-neuron usage under ``score`` summed over the ``positions`` set."""
    if score not in SCORES:
        raise ValueError(f"unknown usage score {score!r}; use one of {SCORES}")
    if positions not in POSITIONS:
        raise ValueError(f"unknown usage positions {positions!r}; use one of {POSITIONS}")
    flat = load_file(str(path))
    prefix = f"{positions}/{score}/"
    out = {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}
    if not out:
        raise ValueError(f"usage file {path} has no {positions!r} / {score!r} scores")
    return out
