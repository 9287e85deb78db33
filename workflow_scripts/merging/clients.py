"""Clients' edit statistics: per fact, the keys at every edited layer and the residual z* − h_L,
measured once on the start model (frozen MEMIT), stored as safetensors and shared by every merge rule.

A client's keys K_i and residual shares R_i at a layer are columns of these per-fact tables, so any
split of the facts into clients, and any merge rule, reuses one computation. The residual share at
the i-th of E layers is R/(E − i) ("remaining", CollabEdit's rule) or R/E ("equal").
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import torch

from workflow_scripts.editing.hparams import TargetSettings
from workflow_scripts.editing.keys import subject_keys_and_hidden
from workflow_scripts.editing.requests import EditRequest
from workflow_scripts.editing.site import edit_site
from workflow_scripts.editing.targets import optimise_targets
from workflow_scripts.editing.templates import check_templates
from workflow_scripts.merging.merges import merge


@dataclass
class EditStatistics:
    """Per-fact keys and residuals of a set of edit requests on one model (columns in request order)."""

    case_ids: list[int]
    layers: tuple[int, ...]
    keys: dict[int, torch.Tensor]  # layer -> (d_k × n) float64: template-mean keys
    residual: torch.Tensor  # (d × n) float64: z* − h_L, h_L the last edited block's output, bare prompt
    lambdas: dict[int, float]  # layer -> λ of the prior P_1 = λC
    templates: list[str]
    fingerprint: str = ""  # the start model's weights (editing.covariance.weights_fingerprint)
    stats: dict = field(default_factory=dict)

    def columns(self, case_ids: Sequence[int]) -> list[int]:
        index = {c: i for i, c in enumerate(self.case_ids)}
        missing = [c for c in case_ids if c not in index]
        if missing:
            raise ValueError(f"no edit statistics for case ids {missing[:5]}{'…' if len(missing) > 5 else ''}")
        return [index[c] for c in case_ids]

    def subset(self, case_ids: Sequence[int]) -> "EditStatistics":
        cols = self.columns(case_ids)
        return EditStatistics([int(c) for c in case_ids], self.layers, {l: k[:, cols] for l, k in self.keys.items()},
                              self.residual[:, cols], dict(self.lambdas), list(self.templates), self.fingerprint,
                              dict(self.stats))


def edit_statistics(model, tokenizer, requests: Sequence[EditRequest], layers: Sequence[int], targets: TargetSettings,
                    templates: Sequence[str], lambdas: Mapping[int, float], fingerprint: str = "") -> EditStatistics:
    """z* at the last edited layer (batched), then every layer's template-mean keys and h_L, all on
    the unedited ``model`` (frozen MEMIT's measurements)."""
    templates = check_templates(templates)
    layers = tuple(int(x) for x in layers)
    target = optimise_targets(model, tokenizer, requests, layers[-1], "block", targets, templates)
    keys, hidden = subject_keys_and_hidden(model, tokenizer, requests, layers, layers[-1], templates)
    residual = target.values.to(torch.float64).T - hidden.to(torch.float64).T
    stats = {"edits": len(requests), "clamp_hits": int(target.stats["clamp_hits"]),
             "z_loss_mean": float(target.loss.mean()), "z_updates_mean": float(target.stats["updates_mean"]),
             "residual_norm_mean": float(residual.norm(dim=0).mean())}
    return EditStatistics([int(r.case_id) for r in requests], layers,
                          {l: keys[l].to(torch.float64).T.contiguous() for l in layers}, residual.contiguous(),
                          {int(l): float(lambdas[l]) for l in layers}, list(templates), fingerprint, stats)


def residual_shares(residual: torch.Tensor, n_layers: int, split: str = "remaining") -> list[torch.Tensor]:
    """The residual written at each of ``n_layers`` layers: R/(E − i) ("remaining") or R/E ("equal")."""
    if split not in ("remaining", "equal"):
        raise ValueError(f"residual split must be 'remaining' or 'equal', got {split!r}")
    return [residual / (n_layers - i) if split == "remaining" else residual / n_layers for i in range(n_layers)]


def split_clients(case_ids: Sequence[int], n_clients: int, seed: int = 0) -> list[list[int]]:
    """The facts dealt to ``n_clients`` clients: a seeded shuffle, then contiguous parts whose sizes
    differ by at most one (each part in case-id order)."""
    if int(n_clients) != n_clients or n_clients < 1:
        raise ValueError(f"clients must be a positive integer, got {n_clients!r}")
    if len(case_ids) < n_clients:
        raise ValueError(f"{n_clients} clients need at least {n_clients} facts; there are {len(case_ids)}")
    order = sorted(int(c) for c in case_ids)
    random.Random(f"clients|{seed}").shuffle(order)
    base, extra = divmod(len(order), n_clients)
    parts, start = [], 0
    for i in range(n_clients):
        size = base + (1 if i < extra else 0)
        parts.append(sorted(order[start : start + size]))
        start += size
    return parts


def merged_deltas(stats: EditStatistics, clients: Sequence[Sequence[int]], rule: str, priors: Mapping[int, torch.Tensor],
                  settings: dict | None = None, split: str = "remaining") -> dict[int, torch.Tensor]:
    """layer -> the merged (out × in) delta of the clients' edits under ``rule``, each client's keys
    and residual shares taken from ``stats`` for its own facts (case ids) only."""
    return column_deltas(stats, [stats.columns(c) for c in clients], rule, priors, settings, split)


def column_deltas(stats: EditStatistics, columns: Sequence[Sequence[int]], rule: str, priors: Mapping[int, torch.Tensor],
                  settings: dict | None = None, split: str = "remaining") -> dict[int, torch.Tensor]:
    """:func:`merged_deltas` with each client given as columns of ``stats`` (a column may belong to
    several clients: the same edit submitted twice)."""
    shares = residual_shares(stats.residual, len(stats.layers), split)
    out = {}
    for i, layer in enumerate(stats.layers):
        keys = [stats.keys[layer][:, c] for c in columns]
        resids = [shares[i][:, c] for c in columns]
        out[layer] = merge(rule, keys, resids, priors[layer], settings)
    return out


def concat_statistics(a: EditStatistics, b: EditStatistics) -> EditStatistics:
    """``a``'s columns followed by ``b``'s (measured on the same model, at the same layers)."""
    if a.layers != b.layers or a.lambdas != b.lambdas:
        raise ValueError("statistics of different layers or λ cannot be joined")
    return EditStatistics(list(a.case_ids) + list(b.case_ids), a.layers,
                          {l: torch.cat([a.keys[l], b.keys[l]], 1) for l in a.layers},
                          torch.cat([a.residual, b.residual], 1), dict(a.lambdas), list(a.templates), a.fingerprint, {})


def apply_deltas(model, deltas: Mapping[int, torch.Tensor]) -> None:
    """Add each layer's (out × in) delta to its edit site in place."""
    for layer, delta in deltas.items():
        edit_site(model, layer).apply(delta)


def save_statistics(stats: EditStatistics, dest: str | os.PathLike, **meta) -> None:
    """Write the statistics as one safetensors file (atomically) with their metadata."""
    from safetensors.torch import save_file

    from workflow_scripts.io import atomic_path

    tensors = {f"keys.{l}": stats.keys[l].contiguous() for l in stats.layers}
    tensors["residual"] = stats.residual.contiguous()
    header = {"case_ids": json.dumps(stats.case_ids), "layers": json.dumps(list(stats.layers)),
              "lambdas": json.dumps({str(k): v for k, v in stats.lambdas.items()}),
              "templates": json.dumps(stats.templates), "fingerprint": stats.fingerprint,
              "stats": json.dumps(stats.stats), **{k: json.dumps(v) for k, v in meta.items()}}
    with atomic_path(Path(dest)) as tmp:
        save_file(tensors, str(tmp), metadata=header)


def load_statistics(path: str | os.PathLike, model=None) -> EditStatistics:
    """Read :func:`save_statistics`'s file; with ``model``, refuse it unless its weights are the ones
    the statistics were measured on."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        layers = tuple(json.loads(meta["layers"]))
        keys = {l: f.get_tensor(f"keys.{l}") for l in layers}
        residual = f.get_tensor("residual")
    stats = EditStatistics(json.loads(meta["case_ids"]), layers, keys, residual,
                           {int(k): v for k, v in json.loads(meta["lambdas"]).items()}, json.loads(meta["templates"]),
                           meta.get("fingerprint", ""), json.loads(meta.get("stats", "{}")))
    if model is not None and stats.fingerprint:
        from workflow_scripts.editing.covariance import weights_fingerprint

        now = weights_fingerprint(model, max(layers))
        if now != stats.fingerprint:
            raise ValueError(f"{path}: edit statistics were measured on another model (fingerprint "
                             f"{stats.fingerprint[:12]} vs {now[:12]}); recompute them for this start model")
    return stats
