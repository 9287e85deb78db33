"""Read and write a model's internals at (row, position) pairs, for editors and causal tracing.

Reading goes through the workflow's one hook utility, :class:`workflow_scripts.models.hooks.Trace`;
this module adds what editing needs on top of it: stopping a forward pass once the deepest traced
module has run (no upper blocks, no LM head), and forward hooks that *change* a module's output at
given positions (add a vector, or put a stored value back). Both accept tensor and tuple outputs
(transformers 5 blocks return tensors; older ones tuples), and the changed output is a new tensor, so
gradients flow to the added vectors.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import nn

from workflow_scripts.models.hooks import Trace, resolve_targets


class _Stop(Exception):
    """Raised inside a hook to end a forward pass early."""


@contextlib.contextmanager
def stop_after(model: nn.Module, names: Sequence[str]) -> Iterator[None]:
    """Within the block, a forward pass ends (silently) once every named module has run once.

    Register this *after* any trace on the same modules, so their hooks run first.
    """
    pending = set(names)
    fired: set[str] = set()
    handles = []

    def make(name):
        def hook(module, args, output):
            fired.add(name)
            if fired >= pending:
                raise _Stop

        return hook

    try:
        for name, module in resolve_targets(model, list(names)):
            handles.append(module.register_forward_hook(make(name)))
        try:
            yield
        except _Stop:
            pass
    finally:
        for h in handles:
            h.remove()


def forward_body(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> None:
    """Run the transformer body (no LM head) for its hooks' sake."""
    body = getattr(model, "base_model", model)
    body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)


@torch.no_grad()
def capture(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
            rows: torch.Tensor, positions: torch.Tensor, inputs: Sequence[str] = (),
            outputs: Sequence[str] = ()) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """({name: input}, {name: output}) of the named modules at the (row, position) pairs, each
    (len(rows), width) in float32. The pass stops once the last of them has run."""
    names = list(dict.fromkeys([*inputs, *outputs]))
    if not names:
        raise ValueError("nothing to capture")
    rows, positions = rows.to(input_ids.device), positions.to(input_ids.device)

    def select(t):
        return t[rows, positions].float()

    trace = Trace(model, names, retain_input=bool(inputs), retain_output=bool(outputs), select=select)
    with trace, stop_after(model, names):
        forward_body(model, input_ids, attention_mask)
    missing = [n for n in names if n not in trace.outputs and n not in trace.inputs]
    if missing:
        raise RuntimeError(f"modules never ran: {missing}")
    return {n: trace.inputs[n] for n in inputs}, {n: trace.outputs[n] for n in outputs}


@contextlib.contextmanager
def block_calls(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, tuple[tuple, dict]]]:
    """Within the block, the (positional args, keyword args) of each named module's last call are
    kept in the yielded dict, so the caller can replay those modules on other inputs (e.g. run only
    the blocks above an edit site, with the masks and position embeddings the model built)."""
    calls: dict[str, tuple[tuple, dict]] = {}
    handles = []

    def make(name):
        def hook(module, args, kwargs):
            calls[name] = (args, dict(kwargs))

        return hook

    try:
        for name, module in resolve_targets(model, list(names)):
            handles.append(module.register_forward_pre_hook(make(name), with_kwargs=True))
        yield calls
    finally:
        for h in handles:
            h.remove()


def _with_main(output, new):
    if isinstance(output, tuple):
        return (new, *output[1:])
    if isinstance(output, list):
        return [new, *output[1:]]
    return new


def _main(output) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


@contextlib.contextmanager
def _write_at(model: nn.Module, name: str, rows: torch.Tensor, positions: torch.Tensor, values: torch.Tensor,
              accumulate: bool) -> Iterator[None]:
    """Within the block, the named module's output at (rows[i], positions[i]) gets ``values[i]``
    added (``accumulate``) or written."""
    (_, module), = resolve_targets(model, name)

    def hook(mod, args, output):
        out = _main(output)
        new = out.index_put((rows.to(out.device), positions.to(out.device)), values.to(out.dtype), accumulate=accumulate)
        return _with_main(output, new)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def add_at(model: nn.Module, name: str, rows: torch.Tensor, positions: torch.Tensor, values: torch.Tensor):
    """Within the block, the named module's output gets ``values[i]`` added at (rows[i], positions[i])
    on every forward pass (``values`` may require grad)."""
    return _write_at(model, name, rows, positions, values, accumulate=True)


def replace_at(model: nn.Module, name: str, rows: torch.Tensor, positions: torch.Tensor, values: torch.Tensor):
    """Within the block, the named module's output is set to ``values[i]`` at (rows[i], positions[i])."""
    return _write_at(model, name, rows, positions, values, accumulate=False)


@contextlib.contextmanager
def frozen_weights(model: nn.Module) -> Iterator[None]:
    """Within the block no parameter requires grad (back-propagation reaches only what the caller
    makes differentiable, e.g. an edit's δ); the flags are restored afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
