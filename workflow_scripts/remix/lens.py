"""Logit lens: in which layer does each fact's answer become the model's top prediction?

For a fact (prompt, target), the residual stream after each block at the last prompt position is
put through the model's final norm and LM head, as if the network ended there. The rank of the
target's first token among those logits (1 = the top token; ties count in the target's favour, as in
:mod:`workflow_scripts.evaluation.exact_match`) is recorded per layer. The *emergence layer* is the
first layer from which the rank stays 1 through the last block (NaN when the last block does not
rank it first). Layers are numbered from 0: layer ``l`` is the output of block ``l``.

The residual stream is read through the workflow's hook utility
(:class:`workflow_scripts.models.hooks.Trace`) on the blocks named by the architecture map; at the
last block the lens equals the model's own logits for architectures whose logits are plainly
``head(norm(h))`` (see :func:`workflow_scripts.models.architectures.body_and_head`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch

from workflow_scripts.models.architectures import block_name, blocks, body_and_head, final_norm_name
from workflow_scripts.models.encoding import encode_pair, length_sorted_batches, pad_id, pad_right
from workflow_scripts.models.hooks import Trace


def _body_and_head(model) -> tuple[torch.nn.Module, torch.nn.Module]:
    parts = body_and_head(model)
    if parts is not None:
        return parts
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output embeddings to project the residual stream with")
    # Logits are post-processed (e.g. soft-capped) for this architecture; the lens leaves that out.
    return model.base_model, head


@torch.no_grad()
def lens_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                positions: torch.Tensor) -> torch.Tensor:
    """(rows, layers, vocabulary) float32 logits of the lens: final norm and LM head applied to each
    block's output at ``positions`` (one position per row of ``input_ids``)."""
    device = next(model.parameters()).device
    input_ids = input_ids.to(device)
    rows = torch.arange(input_ids.shape[0], device=device)
    positions = positions.to(device)
    names = [block_name(model, layer) for layer in range(len(blocks(model)))]
    body, head = _body_and_head(model)
    norm = model.get_submodule(final_norm_name(model))
    trace = Trace(model, names, select=lambda t: t[rows, positions])
    with trace:
        body(input_ids=input_ids, attention_mask=None if attention_mask is None else attention_mask.to(device),
             use_cache=False)
    hidden = torch.stack([trace.outputs[name] for name in names], dim=1)  # (rows, layers, width)
    return head(norm(hidden)).float()


def lens_ranks(model, tokenizer, prompts: Sequence[str], targets: Sequence[str], batch_size: int = 8) -> np.ndarray:
    """(facts, layers) int64 rank of each target's first token under the lens at the last prompt
    position (the model sees the prompt tokens only)."""
    if len(prompts) != len(targets):
        raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
    n_layers = len(blocks(model))
    ranks = np.zeros((len(prompts), n_layers), dtype=np.int64)
    if not len(prompts):
        return ranks
    pairs = [encode_pair(tokenizer, p, t) for p, t in zip(prompts, targets)]
    pad = pad_id(tokenizer)
    for batch in length_sorted_batches([p.target_start for p in pairs], batch_size):
        input_ids, mask = pad_right([pairs[i].ids[:pairs[i].target_start] for i in batch], pad)
        positions = torch.tensor([pairs[i].target_start - 1 for i in batch])
        first = torch.tensor([pairs[i].ids[pairs[i].target_start] for i in batch])
        logits = lens_logits(model, input_ids, mask.long(), positions)  # (B, L, V)
        gold = logits.gather(-1, first.to(logits.device)[:, None, None].expand(-1, n_layers, 1))
        ranks[batch] = ((logits > gold).sum(-1) + 1).cpu().numpy()
    return ranks


def emergence_layers(ranks: np.ndarray | Sequence[Sequence[int]]) -> np.ndarray:
    """Per fact (row of ``ranks``, one column per layer), the first layer from which the rank is 1 in
    every later layer too; NaN when the last layer's rank is not 1. Float64."""
    ranks = np.asarray(ranks)
    if ranks.ndim != 2:
        raise ValueError(f"expected a (facts, layers) rank table, got shape {ranks.shape}")
    top = ranks == 1
    stays = np.logical_and.accumulate(top[:, ::-1], axis=1)[:, ::-1]  # rank 1 here and in every later layer
    out = np.full(ranks.shape[0], np.nan)
    found = stays.any(axis=1)
    out[found] = stays[found].argmax(axis=1)
    return out


def lens_table(model, tokenizer, prompts: Sequence[str], targets: Sequence[str], batch_size: int = 8) -> pd.DataFrame:
    """One row per fact: ``fact`` (its position in the input), ``prompt``, ``target``,
    ``emergence_layer`` (NaN when never), ``final_rank`` and ``rank_0`` … ``rank_{L-1}``."""
    ranks = lens_ranks(model, tokenizer, prompts, targets, batch_size)
    table = pd.DataFrame({
        "fact": np.arange(len(prompts), dtype=np.int64),
        "prompt": pd.Series(list(prompts), dtype=object),
        "target": pd.Series(list(targets), dtype=object),
        "emergence_layer": emergence_layers(ranks),
        "final_rank": ranks[:, -1] if ranks.shape[1] else np.zeros(len(prompts), dtype=np.int64),
    })
    for layer in range(ranks.shape[1]):
        table[f"rank_{layer}"] = ranks[:, layer]
    return table


__all__ = ["emergence_layers", "lens_logits", "lens_ranks", "lens_table"]
