"""What every updater is: a registered method with typed parameters, declared inputs and one ``apply``.

A method's name is its registry key, its config key and its value in result rows. Its ``Params`` is a
frozen dataclass (the defaults live there and in the schema, which a test keeps equal). ``needs``
names the inputs it requires beyond the start model and the facts (e.g. ``usage:old``); the run
table turns them into rule inputs. ``apply`` returns the updated model, the changed parameters as a
delta, and run statistics. Importing this module (and the registry) imports neither torch nor
pandas, so the DAG can read the registry cheaply.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import torch


@dataclass(frozen=True)
class UpdateRequest:
    """What to learn: flat facts (``facts.schema.flat_facts``), the target column to learn them with,
    the shared training settings, the run's seed, the inputs the method declared, and an optional
    per-epoch callback ``checkpoint(model, epoch, record)`` for curves (methods without epochs ignore it)."""

    facts: pd.DataFrame
    target: str
    training: Mapping[str, Any]
    seed: int = 0
    inputs: Mapping[str, Any] = field(default_factory=dict)
    checkpoint: Callable[[Any, int, dict], None] | None = None

    @property
    def prompts(self) -> list[str]:
        return self.facts.prompt.tolist()

    @property
    def targets(self) -> list[str]:
        return self.facts[self.target].tolist()


@dataclass
class UpdateResult:
    model: Any
    delta: dict[str, torch.Tensor] | None  # parameter name -> after - before, changed parameters only
    stats: dict[str, float]  # train_seconds, changed_entries, delta_norm, epochs_run, ...
    columns: dict[str, Any] = field(default_factory=dict)  # method-specific row columns (strategy, k, ...)


def delta_stats(delta: Mapping[str, "torch.Tensor"]) -> dict[str, float]:
    """What every method's row says of its change: entries changed and the delta's Frobenius norm."""
    import torch

    return {"changed_entries": int(sum(int((d != 0).sum()) for d in delta.values())),
            "delta_norm": float(torch.sqrt(sum((d.double() ** 2).sum() for d in delta.values()))) if delta else 0.0}


class Method:
    """Base of every registered method (subclass it, set the class attributes, register an instance)."""

    name: str
    Params: ClassVar[type]
    title: ClassVar[str] = ""
    reference: ClassVar[str] = ""  # the paper or documentation the method follows

    def needs(self, params) -> frozenset[str]:
        """Inputs beyond the start model and facts: ``usage:old``, ``usage:new``, ``usage:history``."""
        return frozenset()

    def apply(self, model, tokenizer, request: UpdateRequest, params) -> UpdateResult:
        raise NotImplementedError

    def untouched(self, model, request: UpdateRequest, params) -> dict[str, torch.Tensor | None]:
        """Parameters the method promises to leave bit-identical: name -> None (all of it) or a
        boolean mask of the entries left alone. Checked by the contract test."""
        return {}

    def variant(self, params, defaults=None) -> str:
        """A readable, unique label of a parameter setting relative to ``defaults`` (the scenario's
        defaults for the method; the dataclass defaults if None). Used in paths; never parsed back."""
        defaults = defaults if defaults is not None else self.Params()
        parts = [f"{f.name}{_fmt(getattr(params, f.name))}" for f in dataclasses.fields(params)
                 if getattr(params, f.name) != getattr(defaults, f.name)]
        return "_".join(parts) or "default"

    def make_params(self, values: Mapping[str, Any], where: str = ""):
        """Typed params from a mapping; unknown keys are named in the error."""
        known = {f.name for f in dataclasses.fields(self.Params)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{where or self.name}: unknown parameter(s) {unknown} of method {self.name!r}; "
                             f"known: {sorted(known)}")
        types = {f.name: str(f.type) for f in dataclasses.fields(self.Params)}
        values = {name: _typed(value, types[name]) for name, value in values.items()}
        try:
            return self.Params(**values)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where or self.name}: {err}") from None


def _typed(value, annotation: str):
    """Numbers as the field's type (so 3 and 3.0 are the same setting); anything else unchanged."""
    if isinstance(value, bool):
        return value
    if annotation == "float" and isinstance(value, int):
        return float(value)
    if annotation == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _fmt(value) -> str:
    if isinstance(value, float):
        return format(value, "g") if value >= 1e-4 or value == 0 else format(value, ".12f").rstrip("0")
    return str(value)


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is registered twice")
    METHODS[method.name] = method
    return method


def method(name: str) -> Method:
    from workflow_scripts.methods import registry  # noqa: F401  (fills METHODS)

    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; registered: {sorted(METHODS)}") from None
