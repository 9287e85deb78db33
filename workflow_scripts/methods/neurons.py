"""Neuron placement strategies (a small registry of their own): functions from usage scores to a neuron mask.

A neuron is one output unit of a tracked linear module. Usage maps module name -> per-neuron score
(see ``training.usage``). A strategy returns module name -> boolean vector (True = this neuron may be
updated), with exactly ``k`` True entries in all (``all_tracked`` selects every neuron). Rankings are global
across modules and blocks; ties break by position, so masks are deterministic. Each strategy declares
the usage roles it reads (``uses``: "old", "new", "history"), so a run gets only the usage it needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # pragma: no cover
    import torch

# torch is imported inside the functions, so the DAG can read the registry (names, what each uses)
# without importing torch.
Usage = "dict[str, torch.Tensor]"
USAGE_SCORES = ("abs_sum", "sum_abs", "sum_sq")  # the statistics training.usage records
USAGE_POSITIONS = ("all_real", "answer")  # the position sets training.usage sums over (training.usage.POSITIONS)


@dataclass(frozen=True)
class StrategyInputs:
    """Usage from old knowledge (A), the new data (B) and an unrelated history set (H)."""

    widths: dict[str, int]  # module name -> number of neurons, in model order
    old: Usage | None = None
    new: Usage | None = None
    history: Usage | None = None


def _flat(inputs: StrategyInputs, usage: Usage | None, what: str) -> torch.Tensor:
    import torch

    if usage is None:
        raise ValueError(f"this strategy needs {what} usage")
    missing = set(inputs.widths) - set(usage)
    if missing:
        raise ValueError(f"{what} usage lacks modules, e.g. {sorted(missing)[:3]}")
    return torch.cat([usage[name].float().reshape(-1) for name in inputs.widths])


def _unflat(inputs: StrategyInputs, chosen: torch.Tensor) -> dict[str, torch.Tensor]:
    out, start = {}, 0
    for name, width in inputs.widths.items():
        out[name] = chosen[start : start + width].clone()
        start += width
    return out


def _top(scores: torch.Tensor, k: int, largest: bool) -> torch.Tensor:
    import torch

    order = torch.argsort(scores, descending=largest, stable=True)
    chosen = torch.zeros(len(scores), dtype=torch.bool)
    chosen[order[:k]] = True
    return chosen


def _check_k(inputs: StrategyInputs, k: int) -> int:
    total = sum(inputs.widths.values())
    if not 0 < k <= total:
        raise ValueError(f"k must be between 1 and the number of neurons ({total}), got {k}")
    return total


def all_tracked(inputs: StrategyInputs, k: int, seed: int) -> dict[str, torch.Tensor]:
    """Every tracked neuron (k is ignored): with embeddings, norms and head frozen, the control that
    separates choosing neurons from freezing everything else."""
    import torch

    return {name: torch.ones(width, dtype=torch.bool) for name, width in inputs.widths.items()}


def _ranked(source: str, largest: bool, doc: str):
    """A strategy that takes the k neurons with the largest (or smallest) usage from ``source``."""

    def strategy(inputs: StrategyInputs, k: int, seed: int) -> dict[str, torch.Tensor]:
        _check_k(inputs, k)
        return _unflat(inputs, _top(_flat(inputs, getattr(inputs, source), source), k, largest))

    strategy.__doc__ = doc
    strategy.uses = (source,)
    return strategy


stubborn = _ranked("old", True, "The k neurons old knowledge used most.")
plastic = _ranked("old", False, "The k neurons old knowledge used least.")
candidate = _ranked("new", True, "The k neurons the new data uses most (an oracle: needs a full pass on it).")
lottery = _ranked("history", True, "The k neurons an unrelated history set used most.")
non_lottery = _ranked("history", False, "The k neurons an unrelated history set used least.")
free_new = _ranked("new", False, "The k neurons the new data used least.")


def _specific(inputs, k, reference: Usage | None, what: str):
    import torch

    total = _check_k(inputs, k)
    if 2 * k > total:
        raise ValueError(f"specific strategies need k <= half of all neurons ({total // 2}), got {k}: "
                         "the k neurons to update must lie outside the k most used by old knowledge")
    busy_old = _top(_flat(inputs, inputs.old, "old"), k, largest=True)
    scores = _flat(inputs, reference, what).clone()
    scores[busy_old] = -torch.inf
    return _unflat(inputs, _top(scores, k, largest=True))


def specific(inputs, k, seed):
    """Top-k by new usage after removing the top-k by old usage (oracle, like candidate)."""
    return _specific(inputs, k, inputs.new, "new")


def specific_general(inputs, k, seed):
    """Top-k by the history set's usage after removing the top-k by old usage."""
    return _specific(inputs, k, inputs.history, "history")


def random_uniform(inputs, k, seed):
    """k neurons drawn uniformly from all neurons (seeded)."""
    import torch

    total = _check_k(inputs, k)
    g = torch.Generator().manual_seed(seed)
    chosen = torch.zeros(total, dtype=torch.bool)
    chosen[torch.randperm(total, generator=g)[:k]] = True
    return _unflat(inputs, chosen)


STRATEGIES: dict[str, Callable[[StrategyInputs, int, int], dict[str, torch.Tensor]]] = {
    "all_tracked": all_tracked,
    "stubborn": stubborn,
    "plastic": plastic,
    "candidate": candidate,
    "specific": specific,
    "specific_general": specific_general,
    "random": random_uniform,
    "lottery": lottery,
    "non_lottery": non_lottery,
    "free_b": free_new,
}
ORACLES = {"candidate", "specific", "free_b"}  # need a full pass on the new data first
all_tracked.uses = random_uniform.uses = ()
specific.uses = ("old", "new")
specific_general.uses = ("old", "history")


def uses(name: str) -> tuple[str, ...]:
    """The usage roles a strategy reads ("old", "new", "history")."""
    return tuple(_strategy(name).uses)


def _strategy(name: str):
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; known: {sorted(STRATEGIES)}") from None


def neuron_mask(name: str, inputs: StrategyInputs, k: int, seed: int = 0) -> dict[str, torch.Tensor]:
    return _strategy(name)(inputs, k, seed)


def resolve_k(k: int | float, total: int) -> int:
    """k as a fraction of all neurons when 0 < k <= 1 (1 = all of them), otherwise as a count."""
    if not k > 0:
        raise ValueError(f"k must be positive, got {k!r}")
    if k <= 1:
        return max(1, round(k * total))
    return int(k)
