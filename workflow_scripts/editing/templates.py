"""Context templates: short prefixes the edit must hold under ("<generated text>. {}").

As in MEMIT, each template is ``"{}"`` (the bare prompt) or a short text sampled from the model itself,
started from one of a few openers ("The", "Therefore", ...), then ``". {}"``. Unlike the reference,
sampling is seeded (one ``torch.Generator`` per template, top-k), so the templates, and the edits made
with them, are reproducible; generate them once per base model and share them (:func:`save_templates`)
so every method and client uses the same ones. ``counts`` lists (length in tokens, how many) pairs:
MEMIT uses ((10, 5),), ROME ((5, 10), (10, 10)).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch

OPENERS = ("The", "Therefore", "Because", "I", "You")
BARE = "{}"


def template_from_text(text: str) -> str:
    """A context template from a generated prefix: braces removed, whitespace collapsed, ``". {}"``."""
    text = " ".join(text.replace("{", " ").replace("}", " ").split())
    return f"{text}. {{}}" if text else BARE


def fixed_templates(prefixes: Iterable[str]) -> list[str]:
    """``"{}"`` plus a template for each given prefix (for tests and hand-made settings)."""
    return [BARE] + [template_from_text(p) for p in prefixes]


def _document_start(tokenizer) -> list[int]:
    """A document-boundary token to condition on when the tokenizer adds no special token itself (the
    reference started ROME's samples from GPT-2's ``<|endoftext|>``); without one, SmolLM2 continues
    a bare "The" with "-"."""
    probe = tokenizer("a")["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    if probe != plain:  # the tokenizer adds its own BOS
        return []
    for tid in (tokenizer.eos_token_id, tokenizer.bos_token_id):
        if tid is not None:
            return [int(tid)]
    return []


@torch.no_grad()
def _sample(model, tokenizer, opener: str, new_tokens: int, generator: torch.Generator, top_k: int,
            document_start: bool = True) -> str:
    device = next(model.parameters()).device
    ids = tokenizer(opener)["input_ids"]
    if not ids:
        raise ValueError(f"opener {opener!r} produced no tokens")
    context = _document_start(tokenizer) if document_start else []
    out_ids = list(ids)
    for _ in range(new_tokens):  # no KV cache: prefixes are a few tokens, and cache APIs differ across versions
        logits = model(input_ids=torch.tensor([context + out_ids], device=device), use_cache=False).logits[0, -1]
        top = torch.topk(logits.float().cpu(), min(top_k, logits.numel()))
        choice = torch.multinomial(torch.softmax(top.values, -1), 1, generator=generator)
        out_ids.append(int(top.indices[choice]))
    return tokenizer.decode(out_ids, skip_special_tokens=True)


def generate_templates(model, tokenizer, counts: Sequence[tuple[int, int]] = ((10, 5),), seed: int = 0,
                       openers: Sequence[str] = OPENERS, top_k: int = 5, document_start: bool = True) -> list[str]:
    """``"{}"`` plus, for each (length, n) in ``counts``, n templates of about ``length`` tokens
    (opener included) sampled from the model with top-k sampling; template i uses opener
    ``openers[j % len(openers)]`` (j its index within its group) and its own generator seeded
    ``seed * 1_000_003 + i``, so adding templates never changes earlier ones. With
    ``document_start``, sampling is conditioned on the tokenizer's end-of-text token when it adds no
    BOS itself (the token is not part of the template)."""
    if not openers:
        raise ValueError("no openers")
    was_training = model.training
    model.eval()
    templates, index = [BARE], 0
    try:
        for length, n in counts:
            if length < 1 or n < 0:
                raise ValueError(f"template counts need length >= 1 and n >= 0, got {(length, n)}")
            for j in range(n):
                opener = openers[j % len(openers)]
                n_opener = len(tokenizer(opener)["input_ids"])
                generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + index)
                text = _sample(model, tokenizer, opener, max(0, int(length) - n_opener), generator, top_k,
                               document_start)
                templates.append(template_from_text(text))
                index += 1
    finally:
        model.train(was_training)
    return templates


def save_templates(templates: Mapping[str, list[str]] | list[str], dest: str | os.PathLike, **meta) -> None:
    """Write templates as JSON: ``{"templates": [...]}`` for a list, else the mapping (e.g.
    ``{"memit": [...], "rome": [...]}``), plus any metadata (seed, model)."""
    from workflow_scripts.io import write_json

    body = {"templates": list(templates)} if isinstance(templates, list) else dict(templates)
    write_json({**body, **meta}, dest)


def load_templates(source, key: str = "templates") -> list[str]:
    """Templates from a list, or a JSON file written by :func:`save_templates` (``key`` picks one of
    several lists; a file with only ``templates`` serves every key)."""
    if isinstance(source, (list, tuple)):
        templates = list(source)
    else:
        data = json.loads(Path(source).read_text(encoding="utf-8"))
        if isinstance(data, list):
            templates = data
        elif key in data:
            templates = data[key]
        elif "templates" in data:
            templates = data["templates"]
        else:
            raise ValueError(f"{source}: no template list {key!r} (has {sorted(data)})")
    return check_templates(templates)


def check_templates(templates: Sequence[str]) -> list[str]:
    """The templates, with the bare ``"{}"`` first (added when missing); each must hold one ``{}``."""
    templates = [str(t) for t in templates]
    for t in templates:
        if t.count("{}") != 1:
            raise ValueError(f"a context template needs exactly one '{{}}': {t!r}")
    if BARE in templates:
        templates.remove(BARE)
    return [BARE, *templates]
