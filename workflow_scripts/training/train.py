"""The one training routine: the same optimiser, schedule, clipping and batching for every arm.

- Loss on answer tokens only (never prompt or padding), each fact weighted equally; the language-model
  head runs only at the positions that predict answer tokens.
- Batches are plain seeded random batches (a fresh shuffle every epoch). A batch's facts are packed
  back to back in one row (position ids restart per fact, so each attends only to itself): no compute
  is spent on padding, so nothing is gained by grouping facts of similar length, which would repeat
  nearly the same batches every epoch. The loss and gradients equal the padded batch's (tested).
  Only the padded fallback (models that cannot pack) buckets batches by length.
- The input embedding's gradient is added only to the rows a batch uses (autograd would build a
  dense zero gradient of the whole vocabulary and add it to the tied head's); the sum is the same.
- AdamW (fused on CPU), constant or linear schedule with warm-up, gradient-norm clipping (with the
  fused optimiser, the clipping factor is applied inside its step instead of in a separate pass).
- Precision: fp32 (the default), or bf16 autocast of the forward pass (weights, gradients and the
  optimiser stay fp32) where the device supports it.
- Data parallel over several processes (``training.processes``; gloo on the CPU, NCCL on GPUs, set
  up through accelerate): the same global batches, each process computing its share, gradients
  summed before clipping; see :mod:`workflow_scripts.training.distributed`.
- Everything else is a plugin (``training.plugins``): which parameters train, update masks, usage
  recording, per-epoch evaluation, early stopping, LoRA adapters, data mixing and per-token weights.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from workflow_scripts.models.encoding import EncodedPair, encode_pair, pad_id, pad_right, target_logits
from workflow_scripts.models.architectures import supports_packing
from workflow_scripts.runtime import keep_freed_memory
from workflow_scripts.training.plugins import TrainingPlugin

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 3e-4
    epochs: int = 10
    batch_size: int = 16
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    schedule: str = "constant"  # "constant" | "linear" (to zero)
    warmup_steps: int = 0
    seed: int = 0
    pack: bool = True  # facts of a batch back to back in one row (no padding) where the model allows it
    precision: str = "fp32"  # "fp32" | "bf16" (autocast of the forward pass)
    processes: int = 1  # data-parallel processes (one per GPU; CPU: the cores are shared out)
    loss_weighting: str = "example"  # "example": each row's mean answer-token loss, rows equal; "token": one mean over the batch's answer tokens
    batching: str = "auto"  # "auto": seeded random batches when packed, length-bucketed otherwise; "random": always random

    def __post_init__(self):
        if self.loss_weighting not in ("example", "token"):
            raise ValueError(f"loss_weighting must be 'example' or 'token', got {self.loss_weighting!r}")
        if self.batching not in ("auto", "random"):
            raise ValueError(f"batching must be 'auto' or 'random', got {self.batching!r}")
        if self.schedule not in ("constant", "linear"):
            raise ValueError(f"schedule must be 'constant' or 'linear', got {self.schedule!r}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")
        if self.lr <= 0 or self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"lr, epochs and batch_size must be positive: {self}")
        if int(self.processes) != self.processes or self.processes < 1:
            raise ValueError(f"processes must be a positive integer, got {self.processes!r}")


def length_bucketed_batches(pairs: Sequence[EncodedPair], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Batches of similar-length examples; random order inside equal lengths and across batches."""
    order = list(range(len(pairs)))
    rng.shuffle(order)
    order.sort(key=lambda i: len(pairs[i].ids))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def random_batches(n: int, batch_size: int, rng: random.Random) -> list[list[int]]:
    """A seeded random partition of ``range(n)`` into batches (the last one may be short)."""
    order = list(range(n))
    rng.shuffle(order)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def collate(pairs: Sequence[EncodedPair], idx: Sequence[int], pad_id: int, device=None):
    """(input_ids, attention_mask, answer_mask) where answer_mask[:, t] marks positions t < T-1 whose
    next token is an answer token."""
    input_ids, mask = pad_right([pairs[i].ids for i in idx], pad_id)
    answer = torch.zeros((len(idx), input_ids.shape[1] - 1), dtype=torch.bool)
    for row, i in enumerate(idx):
        p = pairs[i]
        answer[row, p.target_start - 1 : p.target_end - 1] = True
    return input_ids.to(device), mask.long().to(device), answer.to(device)


def collate_packed(pairs: Sequence[EncodedPair], idx: Sequence[int], device=None):
    """The batch's facts back to back in one row, without padding: (input_ids (1, L), position_ids
    (1, L), answer_mask (1, L-1), owner) where position ids restart at 0 for every fact (the model
    then attends only within a fact) and ``owner`` gives the fact of each answer position."""
    ids, positions, answer_at, owner = [], [], [], []
    for n, i in enumerate(idx):
        p = pairs[i]
        offset = len(ids)
        ids.extend(p.ids)
        positions.extend(range(len(p.ids)))
        answer_at.extend(range(offset + p.target_start - 1, offset + p.target_end - 1))
        owner.extend([n] * (p.target_end - p.target_start))
    answer = torch.zeros((1, len(ids) - 1), dtype=torch.bool)
    answer[0, answer_at] = True
    return (torch.tensor([ids], device=device), torch.tensor([positions], device=device), answer.to(device),
            torch.tensor(owner, device=device))


def answer_loss(model, input_ids, attention, answer, per_batch: int | None = None, position_ids=None,
                owner=None, inputs_embeds=None, token_weights: torch.Tensor | None = None,
                per_token: bool = False) -> torch.Tensor:
    """Sum over facts of the mean cross-entropy over each fact's answer tokens, divided by
    ``per_batch`` (the nominal batch size; default: this batch's number of facts). With the nominal
    size, a fact in a short last batch weighs the same as any other. ``owner`` (the fact of each
    answer position) is needed for packed rows (see :func:`collate_packed`); otherwise a row is a fact.
    ``inputs_embeds``, when given, stand in for the embedding of ``input_ids``. ``token_weights`` (one
    per answer position, in the order of ``answer``) weigh each token's loss; a fact's loss is then
    its weighted mean (weights of a fact summing to zero give it no loss). ``per_token``: instead, one
    (weighted) mean over all answer tokens of the batch, so a row weighs as much as it has answer tokens
    (Hugging Face's ``outputs.loss``, REMIX's and TAALM's baselines)."""
    logits = target_logits(model, input_ids, attention, answer, position_ids=position_ids,
                           inputs_embeds=inputs_embeds)
    gold = input_ids[:, 1:][answer]
    token_loss = F.cross_entropy(logits, gold, reduction="none")
    device = token_loss.device
    if owner is None:
        owner = torch.arange(len(input_ids), device=device)[:, None].expand_as(answer)[answer]
    facts = int(owner.max()) + 1
    if per_token:
        w = token_weights.to(token_loss.dtype) if token_weights is not None else torch.ones_like(token_loss)
        return (token_loss * w).sum() / w.sum().clamp(min=1e-12)
    if token_weights is not None:
        w = token_weights.to(token_loss.dtype)
        per_fact = torch.zeros(facts, device=device).index_add_(0, owner, token_loss * w)
        mass = torch.zeros(facts, device=device).index_add_(0, owner, w)
        return (per_fact / mass.clamp(min=1e-12)).sum() / (per_batch or facts)
    per_fact = torch.zeros(facts, device=device).index_add_(0, owner, token_loss)
    counts = torch.bincount(owner, minlength=facts).clamp(min=1)
    return (per_fact / counts).sum() / (per_batch or facts)


def embedding_leaf(model, input_ids) -> torch.Tensor:
    """The input embeddings of ``input_ids`` as a leaf tensor that collects their gradient, computed
    by the model's own embedding module (so any scaling it applies is kept) from a detached weight."""
    embedding = model.get_input_embeddings()
    return torch.func.functional_call(embedding, {"weight": embedding.weight.detach()}, (input_ids,)).requires_grad_(True)


@torch.no_grad()
def add_embedding_rows(model, input_ids, leaf: torch.Tensor) -> None:
    """After backward: add the gradient collected by :func:`embedding_leaf` to the embedding weight's
    gradient, row by row (the rows of the tokens used; the head's dense gradient is already there
    when the weights are tied)."""
    weight = model.get_input_embeddings().weight
    if leaf.grad is None:
        return
    if weight.grad is None:
        weight.grad = torch.zeros_like(weight)
    weight.grad.index_add_(0, input_ids.reshape(-1), leaf.grad.reshape(-1, leaf.shape[-1]).to(weight.grad.dtype))


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 matmuls run natively here (CUDA with bf16, or a CPU with AVX-512 BF16 or AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def autocast_for(cfg: TrainConfig, device: torch.device):
    """The forward pass's precision context: nothing for fp32, bf16 autocast for bf16."""
    if cfg.precision == "fp32":
        return contextlib.nullcontext()
    if not bf16_supported(device):
        raise ValueError(f"training.precision 'bf16' needs native bf16 support, which this {device.type} lacks; "
                         f"use 'fp32'")
    return torch.autocast(device.type, dtype=torch.bfloat16)


def clip_in_step(optimizer, params, max_norm: float) -> torch.Tensor:
    """Gradient-norm clipping to ``max_norm``; returns the total norm before clipping.

    A fused AdamW divides every gradient by its ``grad_scale`` inside its step, so the clipping
    factor is handed to it there (one pass over the gradients fewer); other optimisers clip as usual.
    Either way the step sees the gradients ``clip_grad_norm_`` would give it."""
    if not optimizer.defaults.get("fused"):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    # the squared norm of each gradient as a dot product (several times faster on CPU than vector_norm)
    squares = [torch.dot(p.grad.reshape(-1), p.grad.reshape(-1)) for p in params if p.grad is not None]
    if not squares:
        return torch.zeros(())
    total = torch.stack(squares).double().sum().sqrt().float()
    # clip_grad_norm_ multiplies by min(1, max_norm / (total + 1e-6)); the step divides by its inverse
    optimizer.grad_scale = torch.clamp((total + 1e-6) / max_norm, min=1.0).to(torch.float32)
    return total


@dataclass
class TrainBatch:
    """One optimiser step's facts, as the model sees them (packed in one row, or padded)."""

    idx: list[int]  # indices of the facts (into the encoded pairs)
    input_ids: torch.Tensor
    attention: torch.Tensor | None  # None when packed
    position_ids: torch.Tensor | None  # restarts per fact when packed
    answer: torch.Tensor  # (rows, seq - 1): positions whose next token is an answer token
    owner: torch.Tensor | None  # fact of each answer position (packed rows)


def train(
    model,
    tokenizer,
    prompts: Sequence[str],
    targets: Sequence[str],
    cfg: TrainConfig,
    plugins: Sequence[TrainingPlugin] = (),
) -> list[dict]:
    """Fine-tune ``model`` in place on (prompt, target) facts; returns one dict per epoch.

    Everything a method changes about training comes in as ``plugins`` (see
    :mod:`workflow_scripts.training.plugins`), called at fixed points: ``prepare`` before the
    optimiser is built, ``trainable`` to choose the optimised parameters (all must agree), ``mix``
    on the encoded facts, ``token_weights`` before every batch's forward pass, ``after_step`` after
    every optimiser step, ``on_epoch`` after every epoch (any True stops training) and ``finish`` at
    the end (in reverse order). The routine itself never knows which method it is running.

    With ``cfg.processes`` > 1 the same training runs data-parallel, this process being rank 0 and
    ``model`` the result (:mod:`workflow_scripts.training.distributed`; plugins need a ``replica``).
    """
    if cfg.processes > 1:
        from workflow_scripts.training.distributed import train_data_parallel

        return train_data_parallel(model, tokenizer, prompts, targets, cfg, plugins)
    return _train(model, tokenizer, prompts, targets, cfg, plugins)


def _train(model, tokenizer, prompts, targets, cfg: TrainConfig, plugins: Sequence[TrainingPlugin] = (),
           group=None) -> list[dict]:
    """:func:`train` in this process; with ``group`` (a ``distributed.ProcessGroup``) as one process of
    a data-parallel run: it takes its share of every batch and sums gradients with the others."""
    device = next(model.parameters()).device
    precision = autocast_for(cfg, device)  # fails before any work if the device lacks bf16
    if device.type == "cpu":
        keep_freed_memory()
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    for plugin in plugins:
        plugin.prepare(model)
    pairs = [encode_pair(tokenizer, p, t) for p, t in zip(prompts, targets)]
    for plugin in plugins:
        pairs = plugin.mix(pairs, rng)
    pad = pad_id(tokenizer)
    packed = cfg.pack and supports_packing(model)
    requires = {n: p.requires_grad for n, p in model.named_parameters()}

    def trainable(name, param) -> bool:
        return all(plugin.trainable(name, param) for plugin in plugins)

    named = [(n, p) for n, p in model.named_parameters() if trainable(n, p)]
    for n, p in model.named_parameters():
        p.requires_grad_(trainable(n, p))
    params = [p for _, p in named]
    if group is not None:
        group.start(params, cfg.seed)
    embedding_rows_only = model.get_input_embeddings().weight.requires_grad
    optimizer = torch.optim.AdamW(
        params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=all(p.device.type == "cpu" for p in params) or None
    )
    steps_per_epoch = -(-len(pairs) // cfg.batch_size)
    total = steps_per_epoch * cfg.epochs

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "linear":
            return max(0.0, (total - step) / max(1, total - cfg.warmup_steps))
        return 1.0

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    history, step = [], 0
    model.train()
    try:
        for epoch in range(1, cfg.epochs + 1):
            start, losses = time.perf_counter(), []
            batches = (random_batches(len(pairs), cfg.batch_size, rng) if packed or cfg.batching == "random"
                       else length_bucketed_batches(pairs, cfg.batch_size, rng))
            for idx in batches:
                if group is not None:
                    idx = group.shard(idx)  # this process's share; the loss keeps the global per_batch
                if idx:
                    if packed:
                        input_ids, position_ids, answer, owner = collate_packed(pairs, idx, device)
                        batch = TrainBatch(idx, input_ids, None, position_ids, answer, owner)
                    else:
                        input_ids, attention, answer = collate(pairs, idx, pad, device)
                        batch = TrainBatch(idx, input_ids, attention, None, answer, None)
                    weights = None
                    for plugin in plugins:
                        w = plugin.token_weights(batch)
                        if w is not None:
                            weights = w if weights is None else weights * w
                    with precision:
                        embeds = embedding_leaf(model, input_ids) if embedding_rows_only else None
                        loss = answer_loss(model, input_ids, batch.attention, answer, per_batch=cfg.batch_size,
                                           position_ids=batch.position_ids, owner=batch.owner, inputs_embeds=embeds,
                                           token_weights=weights, per_token=cfg.loss_weighting == "token")
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if embeds is not None:
                        add_embedding_rows(model, input_ids, embeds)
                else:  # several processes, a batch with fewer facts than processes: nothing to add here
                    optimizer.zero_grad(set_to_none=True)
                    loss = torch.zeros((), device=device)
                if group is not None:
                    loss = group.sum_gradients(params, loss)  # the global batch's gradients and loss
                if cfg.max_grad_norm:
                    clip_in_step(optimizer, params, cfg.max_grad_norm)
                optimizer.step()
                step += 1
                for plugin in plugins:
                    plugin.after_step(model, step)
                scheduler.step()
                losses.append(loss.item())
            model.eval()
            record = {"epoch": epoch, "loss": sum(losses) / len(losses), "seconds": time.perf_counter() - start,
                      "last": epoch == cfg.epochs}  # plugins may skip work the caller does after training anyway
            stop = [plugin.on_epoch(model, epoch, record) for plugin in plugins]
            del record["last"]
            history.append(record)
            log.info("epoch %d: %s", epoch, record)
            if group is not None:
                stop = [group.any(any(stop))]  # a stop asked for in any process stops all
            if any(stop):
                break
            model.train()
    finally:
        model.eval()
        for n, p in model.named_parameters():
            p.requires_grad_(requires.get(n, True))
    for plugin in reversed(plugins):
        model = plugin.finish(model) or model
    return history
