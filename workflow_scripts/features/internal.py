"""Internal features of a probe text, from one forward and one backward pass (no update).

For every tracked linear module of every block (``models.architectures``):
- activation = the module's output at the last token;
- gradient = the gradient of the language-model loss (mean next-token cross-entropy over the text)
  with respect to the module's output at the position that predicts the last token.
Each vector is summarised by 7 statistics (mean, std, min, 25th percentile, median, 75th percentile,
max) under three normalisations: ``raw``; ``zscore`` (the module's output, or gradient, z-scored over
all of the text's tokens and units before taking the position); ``usage`` (raw divided per neuron by
historical usage, scaled to mean 1).

Batches are right-padded; the loss is a per-text sum, so texts never interact and a batch gives the
same features as one text at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from workflow_scripts.models.encoding import length_sorted_batches, pad_id, pad_right, target_logits
from workflow_scripts.models.architectures import body_and_head, linear_modules
from workflow_scripts.models.hooks import Trace

STATISTICS = ("mean", "std", "min", "q25", "median", "q75", "max")
MODALITIES = ("activation", "gradient")
NORMALISATIONS = ("raw", "zscore", "usage")


def vector_statistics(x: torch.Tensor) -> torch.Tensor:
    """(batch, units) -> (batch, 7) in the order of STATISTICS."""
    return _statistics(x.float())


@dataclass(frozen=True)
class FeatureIndex:
    """Names of the module axis of the feature array."""

    module_names: tuple[str, ...]
    module_types: tuple[str, ...]
    blocks: tuple[int, ...]

    def columns(self) -> pd.DataFrame:
        """One row per feature column of ``flatten``: normalisation, modality, module, block, statistic."""
        rows = [
            (norm, mod, mtype, block, stat)
            for norm in NORMALISATIONS
            for mod in MODALITIES
            for mtype, block in zip(self.module_types, self.blocks)
            for stat in STATISTICS
        ]
        return pd.DataFrame(rows, columns=["normalisation", "modality", "module", "block", "statistic"])


def _masked_zscore(full: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per text mean and std over its real tokens and all units. full: (B, T, D), mask: (B, T)."""
    m = mask.to(full.dtype)
    n = m.sum(1) * full.shape[-1]
    per_token = torch.stack([full.sum(-1), (full * full).sum(-1)], -1)  # (B, T, 2)
    sums = torch.einsum("btk,bt->bk", per_token.double(), m.double())
    mu = sums[:, 0] / n
    var = sums[:, 1] / n - mu * mu
    return mu.float(), var.clamp_min(1e-24).sqrt().float()


def internal_features(
    model,
    tokenizer,
    texts: Sequence[str],
    batch_size: int = 16,
    usage: dict[str, torch.Tensor] | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, FeatureIndex]:
    """Features of each text: array (texts, normalisations, modalities, modules, statistics), float32.

    Without ``usage`` the ``usage`` normalisation equals ``raw``.
    """
    modules = linear_modules(model)
    index = FeatureIndex(
        tuple(m.name for m in modules), tuple(m.type for m in modules), tuple(m.block for m in modules)
    )
    scale = {}
    for m in modules:
        u = usage[m.name].float() if usage is not None else torch.ones(m.out_features)
        u = u.abs() + 1e-8
        scale[m.name] = u / u.mean()
    encoded = [tokenizer(t)["input_ids"] for t in texts]
    for t, ids in zip(texts, encoded):
        if len(ids) < 2:
            raise ValueError(f"probe text {t!r} has fewer than 2 tokens")
    out = np.zeros((len(texts), len(NORMALISATIONS), len(MODALITIES), len(modules), len(STATISTICS)), np.float32)
    pad = pad_id(tokenizer)
    embed = model.get_input_embeddings()
    was_training = model.training
    model.eval()
    requires = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        for batch in tqdm(length_sorted_batches([len(e) for e in encoded], batch_size), desc="features",
                          disable=not progress, mininterval=5):
            _extract_batch(model, embed, modules, scale, [encoded[i] for i in batch], pad, out, batch)
    finally:
        for p, r in zip(model.parameters(), requires):
            p.requires_grad_(r)
        model.train(was_training)
    return out, index


def _extract_batch(model, embed, modules, scale, ids_list, pad, out, rows) -> None:
    b = len(ids_list)
    device = embed.weight.device
    input_ids, mask = pad_right(ids_list, pad)
    input_ids, mask = input_ids.to(device), mask.to(device)
    lengths = mask.sum(1)
    ar = torch.arange(b, device=device)
    last, before_last = lengths - 1, lengths - 2
    # (modality, module index) -> (vector at the position (b, units), text mean (b,), text std (b,))
    captured: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def capture(key, full, position):
        mu, sd = _masked_zscore(full.detach(), mask)
        captured[key] = (full.detach()[ar, position].float().cpu(), mu.cpu(), sd.cpu())

    column = {m.name: j for j, m in enumerate(modules)}
    trace = Trace(
        model, modules, retain_output=False,
        on_output=lambda name, output: capture((0, column[name]), output, last),
        on_output_grad=lambda name, grad: capture((1, column[name]), grad, before_last),
    )
    with trace:
        inputs_embeds = embed(input_ids).detach().requires_grad_(True)
        next_mask = mask[:, 1:]
        owner = ar[:, None].expand_as(next_mask)[next_mask]
        weights = (1.0 / next_mask.sum(1))[owner]  # each text's loss is the mean over its tokens
        _backward_lm_loss(model, inputs_embeds, mask.long(), next_mask, input_ids[:, 1:][next_mask], weights)
    # Statistics for all modules of one width at once (one sort instead of one per module).
    by_width: dict[int, list[int]] = {}
    for j, m in enumerate(modules):
        by_width.setdefault(m.out_features, []).append(j)
    for modality in (0, 1):
        for group in by_width.values():
            vecs = torch.stack([captured[(modality, j)][0] for j in group])  # (G, b, units)
            scales = torch.stack([scale[modules[j].name] for j in group])[:, None, :]
            raw, usage = _statistics(torch.stack([vecs, vecs / scales]))  # each (G, b, 7)
            mu = torch.stack([captured[(modality, j)][1] for j in group])[:, :, None]
            sd = torch.stack([captured[(modality, j)][2] for j in group])[:, :, None]
            # z-scoring is affine per text, so its statistics follow from the raw ones
            shift = torch.tensor([1, 0, 1, 1, 1, 1, 1], dtype=raw.dtype)
            zscore = (raw - mu * shift) / sd
            stats = torch.stack([raw, zscore, usage], dim=2)  # (G, b, norms, 7)
            for g, j in enumerate(group):
                out[rows, :, modality, j, :] = stats[g].numpy()


def _backward_lm_loss(model, inputs_embeds, attention_mask, next_mask, gold, weights, chunk: int = 256) -> None:
    """Backpropagate sum(weights * next-token cross-entropy) over the real positions.

    Where the architecture allows, the vocabulary projection and its backward run in chunks of
    positions (the hidden states' gradient is accumulated, then sent through the body once), so the
    full (positions x vocabulary) logits never sit in memory at once.
    """
    parts = body_and_head(model)
    if parts is None:
        logits = target_logits(model, None, attention_mask, next_mask, inputs_embeds=inputs_embeds)
        (F.cross_entropy(logits, gold, reduction="none") * weights).sum().backward()
        return
    body, head = parts
    hidden = body(inputs_embeds=inputs_embeds, attention_mask=attention_mask).last_hidden_state
    selected = hidden[:, :-1][next_mask]
    detached = selected.detach().requires_grad_(True)
    for start in range(0, len(gold), chunk):
        part = slice(start, start + chunk)
        logits = head(detached[part]).float()
        (F.cross_entropy(logits, gold[part], reduction="none") * weights[part]).sum().backward()
    selected.backward(detached.grad)


def _statistics(x: torch.Tensor) -> torch.Tensor:
    """(..., units) -> (..., 7) in the order of STATISTICS; quantiles interpolate linearly (as
    numpy.percentile). Order statistics come from one partial sort (numpy.partition)."""
    x = x.detach().cpu()
    n = x.shape[-1]
    pos = np.array([0.25, 0.5, 0.75]) * (n - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    kth = sorted({0, n - 1, *lo.tolist(), *hi.tolist()})
    part = torch.from_numpy(np.partition(x.numpy(), kth, axis=-1))
    frac = torch.tensor(pos - lo, dtype=x.dtype)
    q = part[..., lo] + (part[..., hi] - part[..., lo]) * frac
    return torch.stack(
        [x.mean(-1), x.std(-1, correction=0), part[..., 0], q[..., 0], q[..., 1], q[..., 2], part[..., n - 1]],
        dim=-1,
    )


def flatten(features: np.ndarray) -> np.ndarray:
    """(texts, norms, modalities, modules, stats) -> (texts, columns) in the order of FeatureIndex.columns()."""
    return features.reshape(features.shape[0], -1)
