"""The key second moment C = E[k kᵀ] of each edited layer, streamed over text and cached by weights.

C is the *uncentred* second moment of the edited module's input over every real (non-pad) token of a
corpus: Σ k kᵀ / count, accumulated in float64 (each batch's KᵀK is formed in ``precision``,
float64 by default). Texts are cut into windows of at most ``max_len`` tokens and taken round-robin
(the first window of every text, then the second windows, ...), until exactly ``tokens`` tokens;
one forward pass per batch of windows runs only up to the deepest edited layer (no LM head).

Caching: one safetensors file per layer under ``cache_dir``, named by a key that hashes
(a) the fingerprint of every parameter that can change that layer's keys (the input embeddings and
blocks 0..layer, all bytes, names, shapes and dtypes: two stage checkpoints that differ anywhere
there never share a file), (b) the layer, (c) the corpus id, (d) the token count and window length.
The reference caches by model name, so fine-tuned stage models would silently share a stale C.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import nn

from workflow_scripts.editing.corpora import corpus_id, corpus_texts
from workflow_scripts.editing.hooks import forward_body, stop_after
from workflow_scripts.editing.site import edit_site
from workflow_scripts.models.architectures import blocks
from workflow_scripts.models.encoding import pad_id, pad_right
from workflow_scripts.models.hooks import Trace

log = logging.getLogger(__name__)

FORMAT = "stubborn-editing-covariance-v1"


def weights_fingerprint(model: nn.Module, upto_layer: int | None = None) -> str:
    """blake2b (128 bit) of the parameters that can affect keys at ``upto_layer`` (input embeddings
    and blocks 0..upto_layer; every parameter when None): names, shapes, dtypes and all bytes.
    Hashing all bytes (rather than a sample) makes any change, however sparse, change the key; it
    costs about 0.3 s per 250 MB."""
    body = list(blocks(model))
    wanted: list[tuple[str, torch.Tensor]] = []
    if upto_layer is None:
        wanted = list(model.named_parameters())
    else:
        emb = model.get_input_embeddings()
        wanted += [(f"embeddings.{n}", p) for n, p in emb.named_parameters()]
        for i, block in enumerate(body[: int(upto_layer) + 1]):
            wanted += [(f"block{i}.{n}", p) for n, p in block.named_parameters()]
        # absolute position embeddings (GPT-2's wpe) also shape the keys
        for n, p in model.named_parameters():
            if n.endswith("wpe.weight"):
                wanted.append((n, p))
    h = hashlib.blake2b(digest_size=16)
    for name, p in wanted:
        t = p.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _windows(tokenizer, texts: Iterable[str], tokens: int, max_len: int) -> list[list[int]]:
    """Windows of at most ``max_len`` token ids, round-robin over texts, exactly ``tokens`` in all
    (fewer when the texts run out)."""
    per_text: list[list[list[int]]] = []
    total = 0
    chosen: list[list[int]] = []
    # first windows as the texts come (stops reading early when enough)
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        if not ids:
            continue
        chunks = [ids[i : i + max_len] for i in range(0, len(ids), max_len)]
        per_text.append(chunks)
        take = chunks[0][: tokens - total]
        chosen.append(take)
        total += len(take)
        if total >= tokens:
            return chosen
    depth = 1
    while total < tokens:
        added = False
        for chunks in per_text:
            if depth < len(chunks):
                take = chunks[depth][: tokens - total]
                chosen.append(take)
                total += len(take)
                added = True
                if total >= tokens:
                    return chosen
        if not added:
            break
        depth += 1
    return chosen


def _max_positions(model) -> int | None:
    for key in ("n_positions", "max_position_embeddings"):
        value = getattr(model.config, key, None)
        if value:
            return int(value)
    return None


@torch.no_grad()
def second_moments(model: nn.Module, tokenizer, layers: Sequence[int], texts: Iterable[str], tokens: int,
                   max_len: int = 256, batch_size: int = 8, precision: torch.dtype = torch.float64,
                   min_tokens_per_dim: float = 1.0) -> tuple[dict[int, torch.Tensor], int]:
    """({layer: C (d_k × d_k, float64)}, token count) of the edited modules' inputs over ``texts``.

    Raises ValueError when fewer than ``min_tokens_per_dim`` × d_k tokens are asked for or found
    (C would be singular below d_k)."""
    layers = sorted({int(x) for x in layers})
    if not layers:
        raise ValueError("no layers")
    sites = {layer: edit_site(model, layer) for layer in layers}
    d_k = max(s.key_width for s in sites.values())
    need = int(min_tokens_per_dim * d_k)
    if tokens < need:
        raise ValueError(f"covariance needs at least {need} tokens ({min_tokens_per_dim:g} x key width {d_k}), "
                         f"got tokens={tokens}")
    limit = _max_positions(model)
    max_len = min(int(max_len), limit) if limit else int(max_len)
    windows = _windows(tokenizer, texts, int(tokens), max_len)
    count = sum(len(w) for w in windows)
    if count < need:
        raise ValueError(f"the corpus gave only {count} tokens; the covariance needs at least {need} "
                         f"({min_tokens_per_dim:g} x key width {d_k})")
    device = next(model.parameters()).device
    names = {sites[layer].name: layer for layer in layers}
    acc = {layer: torch.zeros(sites[layer].key_width, sites[layer].key_width, dtype=torch.float64, device=device)
           for layer in layers}
    state: dict[str, torch.Tensor] = {}

    def on_input(name, x):
        keys = x[state["mask"]].to(precision)
        acc[names[name]] += (keys.T @ keys).to(torch.float64)

    pad = pad_id(tokenizer)
    was_training = model.training
    model.eval()
    try:
        with Trace(model, list(names), retain_output=False, on_input=on_input):
            order = sorted(range(len(windows)), key=lambda i: -len(windows[i]))  # less padding
            for start in range(0, len(order), batch_size):
                batch = [windows[i] for i in order[start : start + batch_size]]
                ids, mask = pad_right(batch, pad)
                state["mask"] = mask.to(device)
                with stop_after(model, list(names)):
                    forward_body(model, ids.to(device), mask.long().to(device))
    finally:
        model.train(was_training)
    return {layer: (acc[layer] / count).cpu() for layer in layers}, count


def covariance_key(model: nn.Module, layer: int, corpus: str, tokens: int, max_len: int, seed: int = 0) -> str:
    """The cache key of one layer's C (see the module docstring)."""
    parts = [FORMAT, weights_fingerprint(model, layer), str(int(layer)), corpus_id(corpus, seed),
             str(int(tokens)), str(int(max_len))]
    return hashlib.blake2b("|".join(parts).encode(), digest_size=16).hexdigest()


def covariance(model: nn.Module, tokenizer, layers: Sequence[int], corpus: str = "gensim_wiki",
               tokens: int = 20_000, max_len: int = 256, cache_dir: str | os.PathLike | None = None,
               seed: int = 0, batch_size: int = 8, min_tokens_per_dim: float = 1.0,
               texts: Iterable[str] | None = None) -> dict[int, torch.Tensor]:
    """{layer: C = E[k kᵀ] (float64, d_k × d_k)} of the edit site's keys over ``tokens`` tokens of
    ``corpus``; layers found in ``cache_dir`` are read, the others computed in one pass and written.
    ``texts`` overrides the corpus's texts (``corpus`` then only names them in the cache key)."""
    from safetensors.torch import load_file

    layers = sorted({int(x) for x in layers})
    out: dict[int, torch.Tensor] = {}
    keys = {}
    if cache_dir is not None:
        for layer in layers:
            keys[layer] = covariance_key(model, layer, corpus, tokens, max_len, seed)
            path = Path(cache_dir) / f"{keys[layer]}.safetensors"
            if path.is_file():
                out[layer] = load_file(str(path))["mom2"]
    todo = [layer for layer in layers if layer not in out]
    if todo:
        start = time.perf_counter()
        source = texts if texts is not None else corpus_texts(corpus, model, tokenizer, seed)
        covs, count = second_moments(model, tokenizer, todo, source, tokens, max_len, batch_size,
                                     min_tokens_per_dim=min_tokens_per_dim)
        seconds = time.perf_counter() - start
        log.info("covariance of layers %s over %d tokens of %s in %.1f s", todo, count, corpus, seconds)
        for layer, c in covs.items():
            out[layer] = c
            if cache_dir is not None:
                meta = {"format": FORMAT, "layer": str(layer), "corpus": corpus_id(corpus, seed), "count": str(count),
                        "tokens": str(tokens), "max_len": str(max_len), "seconds": f"{seconds:.2f}",
                        "fingerprint": weights_fingerprint(model, layer), "key": keys[layer]}
                _save(Path(cache_dir) / f"{keys[layer]}.safetensors", {"mom2": c}, meta)
    return {layer: out[layer] for layer in layers}


def _save(dest: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    from safetensors.torch import save_file

    from workflow_scripts.io import atomic_path

    with atomic_path(dest) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)


def save_covariance(dest: str | os.PathLike, model: nn.Module, covs: dict[int, torch.Tensor],
                    **meta) -> None:
    """One file with every layer's C: tensors ``mom2/<edited module name>`` (float64) and metadata
    (``layers``, per-layer ``fingerprint/<layer>``, and whatever is given, e.g. corpus, count, λ)."""
    tensors, info = {}, {"format": FORMAT, "layers": json.dumps(sorted(covs))}
    for layer, c in covs.items():
        site = edit_site(model, layer)
        tensors[f"mom2/{site.name}"] = c.to(torch.float64)
        info[f"fingerprint/{layer}"] = weights_fingerprint(model, layer)
    info.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()})
    _save(Path(dest), tensors, info)


def load_covariance(path: str | os.PathLike, model: nn.Module, layers: Sequence[int],
                    check: bool = True) -> tuple[dict[int, torch.Tensor], dict[str, str]]:
    """({layer: C}, metadata) from :func:`save_covariance`'s file; with ``check``, each layer's weight
    fingerprint must match ``model`` (a C of another checkpoint is refused)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        names = set(f.keys())
        out = {}
        for layer in layers:
            site = edit_site(model, layer)
            key = f"mom2/{site.name}"
            if key not in names:
                raise ValueError(f"{path}: no covariance for layer {layer} ({key}); it holds {sorted(names)}")
            out[int(layer)] = f.get_tensor(key).to(torch.float64)
            if check and meta.get(f"fingerprint/{layer}") != weights_fingerprint(model, layer):
                raise ValueError(f"{path}: layer {layer}'s covariance was computed on other weights than "
                                 "this model's (fingerprints differ)")
    return out, meta


def editor_covariance(model_dir: str, runs: Sequence[dict], dest: str | os.PathLike) -> dict[int, torch.Tensor]:
    """The ``editing_covariance`` rule: C at the union of the edited layers of ``runs`` (each
    ``{"method", "params"}``, all with one covariance setting) on the checkpoint in ``model_dir``,
    written to ``dest`` (:func:`save_covariance`, with corpus, tokens, window and seconds)."""
    from workflow_scripts.methods.base import method
    from workflow_scripts.models.loading import load_model

    if not runs:
        raise ValueError("no editor run needs this covariance")
    model, tok = load_model(model_dir, dtype="float32")
    settings = set()
    layers: set[int] = set()
    for run in runs:
        m = method(run["method"])
        params = m.make_params(run["params"])
        settings.add((params.cov_corpus, int(params.cov_tokens), int(params.cov_max_len)))
        layers.update(m.edit_layers(model, params))
    if len(settings) != 1:
        raise ValueError(f"one covariance file, several settings: {sorted(settings)}")
    ((corpus, tokens, max_len),) = settings
    start = time.perf_counter()
    covs = covariance(model, tok, sorted(layers), corpus=corpus, tokens=tokens, max_len=max_len)
    save_covariance(dest, model, covs, corpus=corpus_id(corpus), tokens=tokens, max_len=max_len,
                    seconds=round(time.perf_counter() - start, 2))
    return covs
