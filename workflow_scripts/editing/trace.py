"""Where facts live: causal tracing, and a quick ROME sweep over candidate layers.

Causal tracing (Meng et al. 2022, §2): the subject's token embeddings are corrupted with Gaussian
noise (σ = ``noise`` × the standard deviation of the subject tokens' embeddings, 3 by default;
``samples`` seeded draws per fact), and one hidden state at a time is restored to its clean value:
the output of a block (``site="block"``, the residual stream) or of a window of MLPs around a layer
(``site="mlp"``) at one token position. The indirect effect is p(target | restored) − p(target |
corrupted), p the probability of the target's first token after the prompt. All restorations of a
fact share the same noise draws and run batched.

The tables are tidy (one row per fact × layer × position) and carry a ``kind`` per position:
subject_first, subject_middle, subject_last, after_subject (the first token after the subject),
further, last. :func:`choose_layers` reads a table; :func:`efficacy_by_layer` is the decisive quick
check (Hase et al. 2023: tracing peaks predict editing success poorly).
"""

from __future__ import annotations

from typing import Sequence

import pandas as pd
import torch
from torch import nn

from workflow_scripts.editing.hooks import replace_at
from workflow_scripts.editing.positions import subject_span, token_covering
from workflow_scripts.editing.requests import EditRequest
from workflow_scripts.editing.site import edit_site, n_blocks
from workflow_scripts.models.architectures import block_name
from workflow_scripts.models.encoding import encode_pair
from workflow_scripts.models.hooks import Trace


def _subject_tokens(tokenizer, prompt: str, subject: str) -> tuple[list[int], list[int]]:
    enc = tokenizer(prompt, return_offsets_mapping=True)
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    start, end = subject_span(prompt, subject)
    first, last = token_covering(offsets, start), token_covering(offsets, end - 1)
    return list(enc["input_ids"]), list(range(first, last + 1))


def position_kind(position: int, subject: list[int], n_tokens: int) -> str:
    if position == n_tokens - 1:
        return "last"
    if position == subject[-1]:
        return "subject_last"
    if position == subject[0]:
        return "subject_first"
    if subject[0] < position < subject[-1]:
        return "subject_middle"
    if position == subject[-1] + 1:
        return "after_subject"
    return "further" if position > subject[-1] else "before_subject"


@torch.no_grad()
def noise_scale(model: nn.Module, tokenizer, requests: Sequence[EditRequest], factor: float = 3.0) -> float:
    """``factor`` × the standard deviation of the subjects' token embeddings."""
    emb = model.get_input_embeddings()
    ids = set()
    for r in requests:
        tokens, subject = _subject_tokens(tokenizer, r.prompt, r.subject)
        ids.update(tokens[i] for i in subject)
    ids = sorted(ids)
    vectors = emb(torch.tensor(ids, device=emb.weight.device)).float()
    return float(factor * vectors.std())


@torch.no_grad()
def causal_trace(model: nn.Module, tokenizer, requests: Sequence[EditRequest], site: str = "block",
                 window: int = 1, samples: int = 10, noise: float = 3.0, seed: int = 0,
                 positions: str = "all", max_rows: int = 256) -> pd.DataFrame:
    """Indirect effects of restoring each layer (× window, for ``site="mlp"``) at each position.

    ``positions``: "all" tokens, or "key" (the subject's tokens and the last token)."""
    if site not in ("block", "mlp"):
        raise ValueError(f"site must be 'block' or 'mlp', got {site!r}")
    n_layers = n_blocks(model)
    names = [block_name(model, layer) if site == "block" else edit_site(model, layer).mlp for layer in range(n_layers)]
    sigma = noise_scale(model, tokenizer, requests, noise)
    device = next(model.parameters()).device
    emb = model.get_input_embeddings()
    was_training = model.training
    model.eval()
    rows = []
    try:
        for index, r in enumerate(requests):
            ids, subject = _subject_tokens(tokenizer, r.prompt, r.subject)
            pair = encode_pair(tokenizer, r.prompt, r.target)
            target = pair.ids[pair.target_start]
            n_tok = len(ids)
            input_ids = torch.tensor([ids], device=device)
            trace = Trace(model, names, retain_output=True)
            with trace:
                clean_logits = model(input_ids=input_ids, use_cache=False, logits_to_keep=1).logits[0, -1]
            clean = {name: trace.outputs[name][0] for name in names}  # (T, d)
            p_clean = float(torch.softmax(clean_logits.float(), -1)[target])
            g = torch.Generator().manual_seed(int(seed) * 1_000_003 + index)
            draws = (torch.randn(samples, len(subject), emb.embedding_dim, generator=g) * sigma).to(device)
            subj = torch.tensor(subject, device=device)

            def corrupt(module, args, output, _draws=draws, _subj=subj):
                n = output.shape[0] // samples
                noise_rows = _draws.repeat(n, 1, 1).to(output.dtype)
                return output.index_put((torch.arange(output.shape[0], device=output.device)[:, None], _subj[None, :]),
                                        noise_rows, accumulate=True)

            wanted = range(n_tok) if positions == "all" else sorted(set(subject) | {n_tok - 1})
            grid = [(layer, pos) for layer in range(n_layers) for pos in wanted]
            per_pass = max(1, max_rows // samples)
            handle = emb.register_forward_hook(corrupt)
            try:
                base = model(input_ids=input_ids.expand(samples, -1), use_cache=False, logits_to_keep=1).logits[:, -1]
                p_corrupt = float(torch.softmax(base.float(), -1)[:, target].mean())
                for start in range(0, len(grid), per_pass):
                    part = grid[start : start + per_pass]
                    batch = input_ids.expand(samples * len(part), -1)
                    restore: dict[str, tuple[list[int], list[int]]] = {}
                    for g_i, (layer, pos) in enumerate(part):
                        lo, hi = (layer, layer) if site == "block" else (max(0, layer - window // 2),
                                                                          min(n_layers - 1, layer + (window - 1) // 2))
                        for lay in range(lo, hi + 1):
                            rr, pp = restore.setdefault(names[lay], ([], []))
                            rr += list(range(g_i * samples, (g_i + 1) * samples))
                            pp += [pos] * samples
                    managers = [replace_at(model, name, torch.tensor(rr, device=device), torch.tensor(pp, device=device),
                                           clean[name][torch.tensor(pp, device=device)])
                                for name, (rr, pp) in restore.items()]
                    for m in managers:
                        m.__enter__()
                    try:
                        logits = model(input_ids=batch, use_cache=False, logits_to_keep=1).logits[:, -1]
                    finally:
                        for m in reversed(managers):
                            m.__exit__(None, None, None)
                    probs = torch.softmax(logits.float(), -1)[:, target].view(len(part), samples).mean(1)
                    for (layer, pos), p in zip(part, probs.tolist()):
                        rows.append({"case_id": r.case_id, "layer": layer, "position": pos,
                                     "kind": position_kind(pos, subject, n_tok), "token": tokenizer.decode([ids[pos]]),
                                     "site": site, "window": window if site == "mlp" else 1,
                                     "p_clean": p_clean, "p_corrupt": p_corrupt, "p_restored": p,
                                     "effect": p - p_corrupt})
            finally:
                handle.remove()
    finally:
        model.train(was_training)
    return pd.DataFrame(rows)


def choose_layers(table: pd.DataFrame, n_layers: int, width: int = 5, kind: str = "subject_last") -> dict:
    """The layer with the largest mean indirect effect at ``kind`` positions, and a window of
    ``width`` layers centred on it, kept below the last block (a δ at the last block's output cannot
    reach later positions)."""
    part = table[table.kind == kind]
    if part.empty:
        raise ValueError(f"no {kind!r} positions in the trace")
    mean = part.groupby("layer").effect.mean()
    peak = int(mean.idxmax())
    top = max(0, n_layers - 2)
    first = max(0, min(peak - width // 2, top - width + 1))
    layers = tuple(range(first, min(top, first + width - 1) + 1))
    return {"peak": peak, "rome_layer": min(peak, top), "layers": layers,
            "effect_by_layer": {int(k): float(v) for k, v in mean.items()}}


def efficacy_by_layer(model: nn.Module, tokenizer, requests: Sequence[EditRequest], true_targets: Sequence[str],
                      layers: Sequence[int], covs: dict, templates: Sequence[str], hp=None,
                      paraphrases: Sequence[str | None] | None = None) -> pd.DataFrame:
    """ROME at each candidate layer, one fact at a time (weights restored after each): per layer and
    fact, whether the new target beats the old one (mean log-probability) and is the exact-match
    answer, and (with ``paraphrases``) whether it beats the old one after the paraphrase prompt
    (``paraphrase_beats_old``; None without one). v* of all facts at a layer are optimised in one batch."""
    from workflow_scripts.editing.hparams import TargetSettings
    from workflow_scripts.editing.keys import subject_keys
    from workflow_scripts.editing.rome import rome_update
    from workflow_scripts.editing.targets import optimise_targets
    from workflow_scripts.evaluation.exact_match import score_targets

    hp = hp if hp is not None else TargetSettings(clamp=4.0)
    if len(true_targets) != len(requests):
        raise ValueError("one true target per request")
    rows = []
    for layer in layers:
        site = edit_site(model, layer)
        values = optimise_targets(model, tokenizer, requests, layer, "mlp", hp, templates).values
        k_mean, k_bare = (d[layer] for d in subject_keys(model, tokenizer, requests, [layer], templates))
        original = site.weight.detach().clone()
        try:
            for j, r in enumerate(requests):
                site.apply(rome_update(site.matrix(), covs[layer], k_mean[j], k_bare[j], values[j]))
                para = paraphrases[j] if paraphrases is not None else None
                prompts = [r.prompt, r.prompt] + ([para, para] if para else [])
                scores = score_targets(model, tokenizer, prompts, [r.target, true_targets[j]] * (len(prompts) // 2))
                rows.append({"layer": int(layer), "case_id": r.case_id,
                             "new_beats_old": bool(scores.mean_logprob[0] > scores.mean_logprob[1]),
                             "exact": bool(scores.correct[0]),
                             "paraphrase_beats_old": bool(scores.mean_logprob[2] > scores.mean_logprob[3]) if para else None})
                with torch.no_grad():
                    site.weight.copy_(original)
        finally:
            with torch.no_grad():
                site.weight.copy_(original)
    return pd.DataFrame(rows)


def efficacy_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per layer: the share of facts where the new target beats the old one, and exact efficacy."""
    return table.groupby("layer", as_index=False).agg(efficacy=("new_beats_old", "mean"), exact=("exact", "mean"),
                                                      n=("case_id", "size"))
