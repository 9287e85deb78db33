"""Teacher-forced exact match, batched and padding-correct.

A fact counts as known only if, teacher-forced on ``prompt + " " + target``, every target token is
the argmax of the model's next-token distribution at the position before it. Batches are padded on
the right; only the target positions of each example are ever scored, so a fact scores the same alone
or in any batch (the original code dropped the last target position of unpadded rows, so the longest
example of every batch was always wrong).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from workflow_scripts.models.encoding import encode_pair, length_sorted_batches, pad_id, pad_right, target_logits


@torch.no_grad()
def score_targets(
    model,
    tokenizer,
    prompts: Sequence[str],
    targets: Sequence[str],
    batch_size: int = 32,
    progress: bool = False,
) -> pd.DataFrame:
    """Score each (prompt, target) pair; one row per pair, in input order.

    Columns: ``correct`` (every target token is the argmax), ``first_token_prob`` and
    ``first_token_rank`` (1 = argmax) of the first target token, ``first_token_argmax`` (the model's
    next-token prediction after the prompt), ``mean_logprob`` over the target tokens, ``n_target_tokens``.
    """
    if len(prompts) != len(targets):
        raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
    pairs = [encode_pair(tokenizer, p, t) for p, t in zip(prompts, targets)]
    n = len(pairs)
    out = {
        "correct": np.zeros(n, dtype=bool),
        "first_token_prob": np.zeros(n),
        "first_token_rank": np.zeros(n, dtype=np.int64),
        "first_token_argmax": np.zeros(n, dtype=np.int64),
        "mean_logprob": np.zeros(n),
        "n_target_tokens": np.array([p.n_target for p in pairs], dtype=np.int64),
    }
    pad = pad_id(tokenizer)
    device = next(model.parameters()).device
    batches = length_sorted_batches([len(p.ids) for p in pairs], batch_size)
    for batch in tqdm(batches, desc="scoring", disable=not progress, mininterval=5):
        input_ids, attention = pad_right([pairs[i].ids for i in batch], pad)
        labels = torch.full_like(input_ids, -100)
        for row, i in enumerate(batch):
            p = pairs[i]
            labels[row, p.target_start : p.target_end] = input_ids[row, p.target_start : p.target_end]
        # position t predicts token t + 1
        next_labels = labels[:, 1:].to(device)
        mask = next_labels != -100
        sel = target_logits(model, input_ids.to(device), attention.long().to(device), mask)
        gold = next_labels[mask]
        logp = torch.log_softmax(sel, dim=-1)
        gold_logp = logp.gather(1, gold[:, None])[:, 0]
        argmax = sel.argmax(-1)
        hit = argmax == gold
        rank = (sel > sel.gather(1, gold[:, None])).sum(-1) + 1
        owner = torch.arange(len(batch), device=device)[:, None].expand_as(mask)[mask]
        for row, i in enumerate(batch):
            m = owner == row
            out["correct"][i] = bool(hit[m].all())
            out["mean_logprob"][i] = float(gold_logp[m].mean())
            first = int(torch.nonzero(m)[0])
            out["first_token_prob"][i] = float(gold_logp[first].exp())
            out["first_token_rank"][i] = int(rank[first])
            out["first_token_argmax"][i] = int(argmax[first])
    return pd.DataFrame(out)


def accuracy(model, tokenizer, prompts: Sequence[str], targets: Sequence[str], batch_size: int = 32) -> float:
    """Fraction of pairs whose whole target is the teacher-forced argmax."""
    if len(prompts) == 0:
        return float("nan")
    return float(score_targets(model, tokenizer, prompts, targets, batch_size)["correct"].mean())
