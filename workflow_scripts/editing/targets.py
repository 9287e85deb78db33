"""The target vectors: v* (ROME, at the MLP output of the edit layer) and z* (MEMIT, at the residual
stream after the last edit layer), optimised for many edits at once.

For each edit a vector δ is added, at the subject's last token, to the site's output in every
prompt of that edit: one *rewriting* prompt per context template (template filled with the prompt,
followed by the target, tokenised jointly as the metric does) and the KL prompt ``"{subject} is a"``.
Per edit, the loss is (as in the reference, §1.5):

    nll  = mean over rewriting prompts of the mean NLL of the target tokens
    kl   = KL(p_δ ‖ p_0) of the next-token distribution at the subject's last token of the KL prompt
    wd   = weight_decay · ‖δ‖ / ‖h‖²        (h: the site's value at the subject's last token, bare prompt)
    loss = nll + kl_factor · kl + wd

and δ follows Adam from 0: at each step an edit whose loss is below ``early_stop`` stops, and the
last step stops before updating (at most steps - 1 updates); after each update ‖δ‖ is projected to at
most ``clamp`` · ‖h‖. The result is h + δ.

Batched: the δ of all edits form one (n, d) parameter; each sequence sees only its own edit's row,
and Adam is element-wise, so each row follows exactly the trajectory it would follow alone. A row that
has stopped is restored after every later step (Adam's momentum would move it) and its sequences are
dropped from the batch once enough rows have stopped.

Speed: the weights get no gradient, the vocabulary projection runs only at the target and KL
positions, and (for plain llama/GPT-2 blocks) the blocks below the site run once: their output and
each upper block's call arguments are captured, and every step replays only the upper blocks. For
ROME this uses that adding δ to the MLP output equals adding it to the block output
(``architectures.mlp_adds_to_residual``); other architectures take the slow path (a full forward pass
with a hook adding δ at the site).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from workflow_scripts.editing.hooks import add_at, block_calls, frozen_weights
from workflow_scripts.editing.hparams import TargetSettings
from workflow_scripts.editing.positions import KL_TEMPLATE, EncodedEdit, encode_edit
from workflow_scripts.editing.requests import EditRequest
from workflow_scripts.editing.site import edit_site, n_blocks
from workflow_scripts.editing.templates import check_templates
from workflow_scripts.models.architectures import (block_name, blocks, body_and_head, final_norm_name,
                                                    mlp_adds_to_residual)
from workflow_scripts.models.encoding import pad_id, pad_right
from workflow_scripts.models.hooks import Trace

log = logging.getLogger(__name__)

SITES = ("block", "mlp")
REBUILD_BELOW = 0.67  # drop stopped edits' sequences once fewer than this share of the batch is active


@dataclass
class TargetResult:
    site: str  # "block" (residual stream after the layer; MEMIT) or "mlp" (MLP output; ROME)
    layer: int
    values: torch.Tensor  # (n, d) h + δ: z* or v*
    init: torch.Tensor  # (n, d) h: the site's value at the subject's last token of the bare prompt
    delta: torch.Tensor  # (n, d)
    loss: torch.Tensor  # (n,) loss when the edit stopped
    nll: torch.Tensor
    kl: torch.Tensor
    updates: torch.Tensor  # (n,) Adam updates made
    clamped: torch.Tensor  # (n,) bool: ‖δ‖ ended at the clamp
    stats: dict = field(default_factory=dict)


@dataclass(frozen=True)
class _Seq:
    edit: int  # global edit index
    enc: EncodedEdit
    kind: str  # "bare", "context" (a rewriting prompt with a prefix) or "kl"
    weight: float  # per target token: 1 / (n_target · n_rewriting prompts)


def _encode_all(tokenizer, requests: Sequence[EditRequest], templates: list[str]) -> list[list[_Seq]]:
    """Per edit: its rewriting prompts (one per template, the bare one first) and its KL prompt."""
    out = []
    for e, r in enumerate(requests):
        seqs = []
        for k, t in enumerate(templates):
            enc = encode_edit(tokenizer, r.prompt, r.subject, r.target, t)
            seqs.append(_Seq(e, enc, "bare" if k == 0 else "context", 1.0 / (enc.n_target * len(templates))))
        seqs.append(_Seq(e, encode_edit(tokenizer, KL_TEMPLATE.format(r.subject), r.subject), "kl", 0.0))
        out.append(seqs)
    return out


@dataclass
class _Group:
    """Sequences of similar length, padded on the right; edits are indexed locally (0..E-1)."""

    input_ids: torch.Tensor
    attention: torch.Tensor
    row_edit: torch.Tensor  # (R,) local edit of each row
    row_subject: torch.Tensor  # (R,) subject-last position
    tgt_row: torch.Tensor  # rows, positions, gold tokens, weights and edits of the target predictions
    tgt_pos: torch.Tensor
    tgt_gold: torch.Tensor
    tgt_weight: torch.Tensor
    tgt_edit: torch.Tensor
    kl_row: torch.Tensor  # the KL rows, their subject-last positions and edits
    kl_pos: torch.Tensor
    kl_edit: torch.Tensor
    bare_row: torch.Tensor  # the bare rewriting rows and their edits
    bare_edit: torch.Tensor


def _group(seqs: list[tuple[int, _Seq]], pad: int, device) -> _Group:
    cols = {k: [] for k in ("row_edit", "row_subject", "tgt_row", "tgt_pos", "tgt_gold", "tgt_weight", "tgt_edit",
                            "kl_row", "kl_pos", "kl_edit", "bare_row", "bare_edit")}
    for row, (local, seq) in enumerate(seqs):
        enc = seq.enc
        cols["row_edit"].append(local)
        cols["row_subject"].append(enc.subject_last)
        if seq.kind == "kl":
            cols["kl_row"].append(row)
            cols["kl_pos"].append(enc.subject_last)
            cols["kl_edit"].append(local)
            continue
        if seq.kind == "bare":
            cols["bare_row"].append(row)
            cols["bare_edit"].append(local)
        for t in range(enc.target_start, enc.target_end):
            cols["tgt_row"].append(row)
            cols["tgt_pos"].append(t - 1)
            cols["tgt_gold"].append(enc.ids[t])
            cols["tgt_weight"].append(seq.weight)
            cols["tgt_edit"].append(local)
    ids, mask = pad_right([seq.enc.ids for _, seq in seqs], pad)
    tensors = {k: torch.tensor(v, dtype=torch.float32 if k == "tgt_weight" else torch.long, device=device)
               for k, v in cols.items()}
    return _Group(ids.to(device), mask.long().to(device), **tensors)


def _groups(encoded: list[list[_Seq]], edits: list[int], pad: int, device, ratio: float = 0.75) -> list[_Group]:
    """The sequences of ``edits`` (local index = position in ``edits``) in groups of similar length:
    a group closes when the next (shorter) sequence is below ``ratio`` of its longest, which keeps
    padding small without many small passes."""
    seqs = [(local, seq) for local, e in enumerate(edits) for seq in encoded[e]]
    seqs.sort(key=lambda x: -len(x[1].enc.ids))
    groups, current = [], []
    for item in seqs:
        if current and len(item[1].enc.ids) < ratio * len(current[0][1].enc.ids):
            groups.append(current)
            current = []
        current.append(item)
    if current:
        groups.append(current)
    return [_group(g, pad, device) for g in groups]


class _Runner:
    """Forward passes of one group of sequences with δ added at their subject-last positions."""

    def __init__(self, model: nn.Module, layer: int, site: str, rows: _Group, replay: bool):
        self.model, self.layer, self.site, self.rows, self.replay = model, layer, site, rows, replay
        self.block = block_name(model, layer)
        self.site_name = self.block if site == "block" else edit_site(model, layer).mlp
        parts = body_and_head(model)
        self.head = parts[1] if parts is not None else None
        self.norm = model.get_submodule(final_norm_name(model)) if replay else None
        self.upper = [(block_name(model, j), blocks(model)[j]) for j in range(layer + 1, n_blocks(model))]
        with torch.no_grad():
            names = [self.block] + ([self.site_name] if self.site_name != self.block else [])
            trace = Trace(model, names, retain_output=True)
            with trace, block_calls(model, [n for n, _ in self.upper] if replay else []) as calls:
                if self.head is not None:
                    body_out = forward_body_out(model, rows.input_ids, rows.attention)
                    kl_logits = self._logits_from_final(body_out, rows.kl_row, rows.kl_pos, normed=True)
                else:
                    logits = model(input_ids=rows.input_ids, attention_mask=rows.attention, use_cache=False).logits
                    kl_logits = logits[rows.kl_row, rows.kl_pos].float()
            self.base = trace.outputs[self.block] if replay else None
            self.calls = dict(calls) if replay else {}
            self.init = trace.outputs[self.site_name][rows.bare_row, rows.row_subject[rows.bare_row]].float()
            self.kl_init_logp = torch.log_softmax(kl_logits, -1)

    def _logits_from_final(self, hidden, rows, pos, normed: bool) -> torch.Tensor:
        sel = hidden[rows, pos]
        if not normed:
            sel = self.norm(sel)
        return self.head(sel).float()

    def logits(self, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits at the target-predicting positions, logits at the KL positions) with ``delta``
        (local edits × d) added at every row's subject-last position."""
        r = self.rows
        values = delta[r.row_edit]
        rows_all = torch.arange(len(r.row_edit), device=r.input_ids.device)
        if self.replay:
            h = self.base.index_put((rows_all, r.row_subject), values.to(self.base.dtype), accumulate=True)
            for name, block in self.upper:
                args, kwargs = self.calls[name]
                out = block(h, *args[1:], **kwargs) if args else block(**{**kwargs, "hidden_states": h})
                h = out[0] if isinstance(out, (tuple, list)) else out
            return (self._logits_from_final(h, r.tgt_row, r.tgt_pos, normed=False),
                    self._logits_from_final(h, r.kl_row, r.kl_pos, normed=False))
        with add_at(self.model, self.site_name, rows_all, r.row_subject, values):
            if self.head is not None:
                hidden = forward_body_out(self.model, r.input_ids, r.attention)
                return (self._logits_from_final(hidden, r.tgt_row, r.tgt_pos, normed=True),
                        self._logits_from_final(hidden, r.kl_row, r.kl_pos, normed=True))
            logits = self.model(input_ids=r.input_ids, attention_mask=r.attention, use_cache=False).logits
            return logits[r.tgt_row, r.tgt_pos].float(), logits[r.kl_row, r.kl_pos].float()


class _Batch:
    """All sequences of a set of edits, as length groups with one runner each."""

    def __init__(self, model, layer: int, site: str, encoded, edits: list[int], pad: int, device, replay: bool):
        self.edits = edits
        self.runners = [_Runner(model, layer, site, g, replay) for g in _groups(encoded, edits, pad, device)]
        n = len(edits)
        first = self.runners[0]
        self.init = torch.zeros(n, first.init.shape[-1], device=device)
        self.kl_init = torch.zeros(n, first.kl_init_logp.shape[-1], device=device)
        for run in self.runners:
            self.init[run.rows.bare_edit] = run.init
            self.kl_init[run.rows.kl_edit] = run.kl_init_logp

    def losses(self, delta: torch.Tensor, init_norm_sq: torch.Tensor, hp: TargetSettings):
        """Per local edit: (loss, nll, kl) with ``delta`` (local edits × d)."""
        n = len(self.edits)
        nll = torch.zeros(n, device=delta.device)
        kl = torch.zeros(n, device=delta.device)
        for run in self.runners:
            r = run.rows
            tgt_logits, kl_logits = run.logits(delta)
            if len(r.tgt_row):
                logp = torch.log_softmax(tgt_logits, -1).gather(1, r.tgt_gold[:, None])[:, 0]
                nll = nll.index_add(0, r.tgt_edit, -logp * r.tgt_weight)
            if len(r.kl_row):
                cur = torch.log_softmax(kl_logits, -1)
                part = F.kl_div(self.kl_init[r.kl_edit], cur, log_target=True, reduction="none").sum(-1)  # KL(p_δ ‖ p_0)
                kl = kl.index_add(0, r.kl_edit, part)
        wd = hp.weight_decay * delta.norm(dim=-1) / init_norm_sq
        return nll + hp.kl_factor * kl + wd, nll, kl


def forward_body_out(model: nn.Module, input_ids, attention) -> torch.Tensor:
    body = getattr(model, "base_model", model)
    return body(input_ids=input_ids, attention_mask=attention, use_cache=False).last_hidden_state


def can_replay(model: nn.Module, site: str) -> bool:
    """Whether the fast path (replaying only the blocks above the site) is exact for this model."""
    return body_and_head(model) is not None and (site == "block" or mlp_adds_to_residual(model))


def optimise_targets(model: nn.Module, tokenizer, requests: Sequence[EditRequest], layer: int, site: str,
                     hp: TargetSettings, templates: Sequence[str], replay: bool | None = None) -> TargetResult:
    """v* (``site="mlp"``) or z* (``site="block"``) at ``layer`` for every request; edits are
    optimised in batches of ``hp.batch`` (see the module docstring). ``replay`` forces the fast or
    slow forward path (default: fast where exact)."""
    if site not in SITES:
        raise ValueError(f"site must be one of {SITES}, got {site!r}")
    if not requests:
        raise ValueError("no edit requests")
    templates = check_templates(templates)
    replay = can_replay(model, site) if replay is None else replay
    if replay and not can_replay(model, site):
        raise ValueError(f"the replay path is not exact for {type(model).__name__} at site {site!r}")
    edit_site(model, layer)  # validates the layer
    device = next(model.parameters()).device
    encoded = _encode_all(tokenizer, requests, templates)
    n = len(requests)
    results = []
    was_training = model.training
    model.eval()
    try:
        with frozen_weights(model):
            for start in range(0, n, hp.batch):
                chunk = list(range(start, min(n, start + hp.batch)))
                results.append(_optimise_chunk(model, tokenizer, encoded, chunk, layer, site, hp, replay, device))
    finally:
        model.train(was_training)
    cat = {k: torch.cat([r[k] for r in results]) for k in results[0]}
    width = cat["init"].shape[1]
    max_norm = hp.clamp * cat["init"].norm(dim=-1)
    clamped = cat["delta"].norm(dim=-1) >= max_norm * (1 - 1e-5)
    stats = {"edits": n, "width": width, "templates": len(templates), "replay": replay,
             "updates_mean": float(cat["updates"].float().mean()), "clamp_hits": int(clamped.sum()),
             "loss_mean": float(cat["loss"].mean()), "nll_mean": float(cat["nll"].mean())}
    return TargetResult(site, int(layer), cat["init"] + cat["delta"], cat["init"], cat["delta"], cat["loss"],
                        cat["nll"], cat["kl"], cat["updates"], clamped, stats)


def _optimise_chunk(model, tokenizer, encoded, chunk: list[int], layer: int, site: str, hp: TargetSettings,
                    replay: bool, device) -> dict[str, torch.Tensor]:
    pad = pad_id(tokenizer)
    batch = _Batch(model, layer, site, encoded, chunk, pad, device, replay)
    init = batch.init.detach()  # (E, d), local order = chunk order
    kl_init = batch.kl_init.detach()
    n_edit, d = init.shape
    init_norm_sq = init.norm(dim=-1) ** 2
    max_norm = hp.clamp * init.norm(dim=-1)
    delta = torch.zeros(n_edit, d, device=device, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=hp.lr)
    active = torch.ones(n_edit, dtype=torch.bool, device=device)
    loss_at = torch.zeros(n_edit, device=device)
    nll_at, kl_at = torch.zeros_like(loss_at), torch.zeros_like(loss_at)
    updates = torch.zeros(n_edit, dtype=torch.long, device=device)
    local = torch.arange(n_edit, device=device)  # batch-local edit -> chunk-local edit
    for it in range(hp.steps):
        loss, nll, kl = batch.losses(delta[local], init_norm_sq[local], hp)
        with torch.no_grad():
            loss_at[local], nll_at[local], kl_at[local] = loss.detach(), nll.detach(), kl.detach()
            stop = (loss.detach() < hp.early_stop) | (it == hp.steps - 1)
            active[local[stop]] = False
        if not bool(active.any()):
            break
        opt.zero_grad(set_to_none=True)
        loss[~stop].sum().backward()
        with torch.no_grad():
            keep = delta.detach().clone()
        opt.step()
        with torch.no_grad():
            delta[~active] = keep[~active]
            updates[active] += 1
            norms = delta.norm(dim=-1)
            over = active & (norms > max_norm)
            if bool(over.any()):
                delta[over] = delta[over] * (max_norm[over] / norms[over])[:, None]
        alive = torch.nonzero(active).flatten()
        if len(alive) < REBUILD_BELOW * len(local):  # drop the stopped edits' sequences
            batch = _Batch(model, layer, site, encoded, [chunk[int(i)] for i in alive], pad, device, replay)
            batch.kl_init = kl_init[alive]
            local = alive
    return {"init": init.cpu(), "delta": delta.detach().cpu(), "loss": loss_at.cpu(), "nll": nll_at.cpu(),
            "kl": kl_at.cpu(), "updates": updates.cpu()}
