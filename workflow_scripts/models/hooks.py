"""Look inside a model: capture the inputs, outputs and output gradients of named modules.

The one hook utility of the workflow. Everything that needs to see what a module computes
(per-neuron usage while training, internal features of a probe text, and later ROME/MEMIT key
capture, covariance statistics and knowledge entropy) goes through :class:`Trace` instead of
registering PyTorch hooks by hand. Module names come from the architecture map
(:func:`workflow_scripts.models.architectures.linear_modules`), which stays the one place that knows
them; a trace accepts its entries directly::

    with Trace(model, linear_modules(model), retain_input=True) as trace:
        model(input_ids)
    keys = trace.inputs["model.layers.3.mlp.down_proj"]      # what the module saw
    values = trace.outputs["model.layers.3.mlp.down_proj"]   # what it returned

A trace can keep tensors per module (``retain_input`` / ``retain_output``, optionally reduced by
``select``) or hand them to callbacks as they are computed (``on_input`` / ``on_output``), which keeps
no memory; ``on_output_grad`` is called during backward with the gradient at a module's output.

Rules:
- Forward hooks are registered when the trace is entered and all removed when it exits, also when
  the block raises.
- A gradient hook is registered on a module's output tensor only when that tensor requires grad, and
  it does nothing once the trace has exited (a backward pass after the ``with`` block reports nothing).
  Gradient hooks never change the gradient.
- A module called several times inside one trace keeps its last call's tensors; callbacks see every
  call.
- A module's input is its first positional argument (or, without one, its first tensor keyword
  argument); an output that is a tuple or list (as transformer blocks return) stands for its first
  element. Anything else is passed on or kept as it is, with no gradient hook.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Protocol, Union

import torch
from torch import nn

from workflow_scripts.models.architectures import linear_modules

__all__ = ["Trace", "Target", "resolve_targets", "trace_linear"]


class _NamedModule(Protocol):
    """Anything with a full dotted ``name`` and its ``module``, e.g. an ``architectures.LinearModule``."""

    name: str
    module: nn.Module


# A module to trace: its full dotted name, the module itself, or an entry of the architecture map.
Target = Union[str, nn.Module, _NamedModule]

TensorCallback = Callable[[str, torch.Tensor], None]


def resolve_targets(model: nn.Module, targets: Target | Iterable[Target]) -> list[tuple[str, nn.Module]]:
    """(full dotted name, module) for each target, in the given order.

    Raises ValueError for a module that is not part of ``model`` or one named twice, and
    AttributeError (from ``get_submodule``) for an unknown name.
    """
    if isinstance(targets, (str, nn.Module)) or hasattr(targets, "module"):
        targets = [targets]
    module_names: dict[int, str] | None = None
    resolved: list[tuple[str, nn.Module]] = []
    for target in targets:
        if isinstance(target, str):
            resolved.append((target, model.get_submodule(target)))
        elif isinstance(target, nn.Module):
            if module_names is None:
                module_names = {id(m): n for n, m in model.named_modules()}
            if id(target) not in module_names:
                raise ValueError(f"{type(target).__name__} module is not part of the traced model")
            resolved.append((module_names[id(target)], target))
        elif isinstance(getattr(target, "name", None), str) and isinstance(getattr(target, "module", None), nn.Module):
            resolved.append((target.name, target.module))
        else:
            raise TypeError(f"cannot trace {target!r}: give a module name, a module, or an object with "
                            ".name and .module")
    seen: set[str] = set()
    repeated = sorted({n for n, _ in resolved if n in seen or seen.add(n)})
    if repeated:
        raise ValueError(f"modules named more than once: {repeated}")
    return resolved


def _main_tensor(value: Any) -> Any:
    """The tensor that stands for a module's output (the first element of a tuple or list)."""
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return value


def _first_input(args: tuple, kwargs: dict) -> Any:
    if args:
        return args[0]
    return next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)


class Trace:
    """Context manager that captures inputs, outputs and output gradients of the given modules.

    Args:
        model: the model the targets belong to (names are resolved against it).
        targets: module names, modules or architecture-map entries (see :data:`Target`); one or many.
        retain_input: keep each module's (last) input in :attr:`inputs`, by module name.
        retain_output: keep each module's (last) output in :attr:`outputs`, by module name.
        select: applied to a tensor before it is kept (e.g. ``lambda t: t[:, -1]`` keeps the last
            position only); not applied to what callbacks receive.
        detach: keep tensors detached from the graph (default); False keeps them differentiable.
        clone: keep a copy, so later in-place changes of the live tensor cannot alter it.
        on_input: ``fn(name, input)`` at every traced call, with the live input.
        on_output: ``fn(name, output)`` at every traced call, with the live output.
        on_output_grad: ``fn(name, grad)`` during backward, with the gradient of whatever was
            differentiated with respect to the module's output (same shape as the output).
        active: ``fn() -> bool`` asked at every forward call; when False that call is ignored
            entirely (nothing kept, no callbacks, no gradient hook).
    """

    def __init__(
        self,
        model: nn.Module,
        targets: Target | Iterable[Target],
        *,
        retain_input: bool = False,
        retain_output: bool = True,
        select: Callable[[torch.Tensor], torch.Tensor] | None = None,
        detach: bool = True,
        clone: bool = False,
        on_input: TensorCallback | None = None,
        on_output: TensorCallback | None = None,
        on_output_grad: TensorCallback | None = None,
        active: Callable[[], bool] | None = None,
    ) -> None:
        self.targets = resolve_targets(model, targets)
        self.retain_input = retain_input
        self.retain_output = retain_output
        self.select = select
        self.detach = detach
        self.clone = clone
        self.on_input = on_input
        self.on_output = on_output
        self.on_output_grad = on_output_grad
        self.active = active
        self.inputs: dict[str, Any] = {}
        self.outputs: dict[str, Any] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._entered = False
        self._entries = 0  # gradient hooks fire only within the entry whose forward registered them

    @property
    def names(self) -> list[str]:
        """The traced modules' full dotted names, in the order given."""
        return [name for name, _ in self.targets]

    def __enter__(self) -> Trace:
        if self._entered:
            raise RuntimeError("this trace is already active")
        try:
            for name, module in self.targets:
                self._handles.append(module.register_forward_hook(self._forward_hook(name), with_kwargs=True))
        except BaseException:
            self._remove()
            raise
        self._entered = True
        self._entries += 1
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._remove()

    def close(self) -> None:
        """Remove all hooks now (what leaving the ``with`` block does)."""
        self._remove()

    def _remove(self) -> None:
        self._entered = False
        handles, self._handles = self._handles, []
        for handle in handles:
            handle.remove()

    def _keep(self, value: Any) -> Any:
        if not isinstance(value, torch.Tensor):
            return value
        if self.select is not None:
            value = self.select(value)
        if self.detach:
            value = value.detach()
        if self.clone:
            value = value.clone()
        return value

    def _forward_hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            if self.active is not None and not self.active():
                return
            if self.retain_input or self.on_input is not None:
                inp = _first_input(args, kwargs)
                if self.on_input is not None:
                    self.on_input(name, inp)
                if self.retain_input:
                    self.inputs[name] = self._keep(inp)
            out = _main_tensor(output)
            if self.on_output is not None:
                self.on_output(name, out)
            if self.retain_output:
                self.outputs[name] = self._keep(out)
            if self.on_output_grad is not None and isinstance(out, torch.Tensor) and out.requires_grad:
                out.register_hook(self._grad_hook(name, self._entries))

        return hook

    def _grad_hook(self, name: str, entry: int) -> Callable[[torch.Tensor], None]:
        def hook(grad: torch.Tensor) -> None:
            if self._entered and self._entries == entry and self.on_output_grad is not None:
                self.on_output_grad(name, grad)

        return hook


def trace_linear(model: nn.Module, **kwargs: Any) -> Trace:
    """A :class:`Trace` over every tracked linear module of the architecture map."""
    return Trace(model, linear_modules(model), **kwargs)
