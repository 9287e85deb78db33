"""Text encoding and batching shared by training, scoring and feature extraction.

``prompt + " " + target`` is tokenised once and the target tokens are found from character offsets;
batches are padded on the right; :func:`target_logits` runs the vocabulary projection only at the
positions that predict target tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from workflow_scripts.models.architectures import body_and_head


@dataclass(frozen=True)
class EncodedPair:
    ids: list[int]  # prompt and target tokens (plus any special tokens the tokenizer adds in front)
    target_start: int  # index of the first target token
    target_end: int  # one past the last target token

    @property
    def n_target(self) -> int:
        return self.target_end - self.target_start


def encode_pair(tokenizer, prompt: str, target: str) -> EncodedPair:
    """Tokenise ``prompt + " " + target`` and find which tokens belong to the target.

    The joint text is tokenised once (so the tokens are those the model would see); target tokens
    are those whose character span ends inside the target, found from the offsets.
    """
    prompt = prompt.rstrip()
    target = target.strip()
    if not prompt or not target:
        raise ValueError(f"empty prompt or target: {prompt!r} / {target!r}")
    text = f"{prompt} {target}"
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        idx = [i for i, (s, e) in enumerate(offsets) if e > len(prompt) and e > s]
        if not idx:
            raise ValueError(f"target {target!r} produced no tokens")
        start, end = idx[0], idx[-1] + 1
        if idx != list(range(start, end)):
            raise ValueError(f"target tokens of {text!r} are not contiguous")
    else:
        p = tokenizer(prompt)["input_ids"]
        t = tokenizer(" " + target, add_special_tokens=False)["input_ids"]
        ids, start, end = p + t, len(p), len(p) + len(t)
    if start < 1:
        raise ValueError(f"prompt {prompt!r} produced no tokens before the target")
    return EncodedPair(list(ids), start, end)


def pad_id(tokenizer) -> int:
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if tid is not None:
            return int(tid)
    return 0


def pad_right(sequences: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, mask): token lists padded on the right to the longest; mask is True on real tokens."""
    width = max(len(x) for x in sequences)
    input_ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.bool)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        mask[row, : len(ids)] = True
    return input_ids, mask


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), to cut padding."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def target_logits(model, input_ids, attention_mask, mask, inputs_embeds=None, position_ids=None) -> torch.Tensor:
    """Logits (float32) at the positions ``mask`` selects among ``[:, :-1]``, i.e. those predicting
    target tokens. The vocabulary projection runs only there when the architecture allows it.
    ``position_ids`` that restart inside a row (with no attention mask) mark packed facts, which
    then attend only within themselves."""
    inputs = {"input_ids": input_ids} if inputs_embeds is None else {"inputs_embeds": inputs_embeds}
    inputs.update(attention_mask=attention_mask, use_cache=False)
    if position_ids is not None:
        inputs["position_ids"] = position_ids
    parts = body_and_head(model)
    if parts is None:
        logits = model(**inputs).logits
        return logits[:, :-1][mask].float()
    body, head = parts
    hidden = body(**inputs).last_hidden_state
    return head(hidden[:, :-1][mask]).float()
