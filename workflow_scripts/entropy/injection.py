"""Fictional-knowledge injection (opt-in mini protocol, spec B-4; rules ``entropy_injection`` and
``entropy_injection_report``), usable outside Snakemake.

A start checkpoint is trained further as a plain language model on generic text rows (``max_tokens``
tokens each, ``batch_size`` rows a step, ``steps`` AdamW steps; the loss is the mean next-token
cross-entropy over every real token). Every ``steps // injections`` steps comes an injection: its
knowledge sequences (cut to ``knowledge_tokens`` tokens) are put in front of batch rows, and each such
row is cut back to ``max_tokens`` tokens, so the generic text loses its tail. Two kinds of items:

- *paraphrase* items are injected at every injection, injection i with version ``i mod n`` of the
  item (version 0 is its ``train_context``, versions 1.. its ``paraphrases``);
- *once* items are injected once each, spread evenly over the injections (always ``train_context``).

One injection's sequences fill the rows of its first step in order and spill into the next steps'
batches when there are more sequences than rows (an error if they would reach the next injection).

Probes (per item: memorisation ``mem_*``, semantic ``gen_*`` and composition ``hard_gen_*``, five of
each in the shared files) are kept only when their target lies inside the text that was actually
trained on: a mem probe's input is a verbatim prefix of ``train_context``, so its target's
character span must end inside the kept (cut) ``train_context``; a gen/hard_gen probe's target must
occur verbatim in the kept text of a version the item was injected with. Each kept probe is scored
(``prompt + " " + target``, target tokens only: their mean log-probability and teacher-forced exact
match, :func:`~workflow_scripts.evaluation.exact_match.score_targets`) at step 0, every
``probe_every`` steps and at the end, together with the perplexity of held-out generic text.

Metrics per item kind and probe type: K = mean target log-prob over probes; acquisition
``A = (K_end - K_0) / |K_0|`` (K is negative, so A > 0 when log-probs rise; spec B.4.6); exact-match
counts with Wilson intervals.

The pure pieces (:func:`prepend_truncate`, :func:`injection_schedule`, :func:`place_sequences`,
:func:`filter_probes`, :func:`acquisition`, :func:`group_name`, :func:`generic_windows`) need no torch;
this module imports torch only inside the functions that train or score, so the workflow can read
:func:`data_paths` at parse time.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

log = logging.getLogger(__name__)

DATA_FILES = {
    "paraphrase": "fictional_knowledge_paraphrased_paraphrase70.json",
    "once": "fictional_knowledge_paraphrased_once60.json",
}
KINDS = ("paraphrase", "once")
PROBE_TYPES = ("mem", "gen", "hard_gen")
ITEM_FIELDS = ("train_context", "paraphrases") + tuple(f"{t}_{part}" for t in PROBE_TYPES for part in ("input", "target"))
CONFIG_KEY = "entropy.injection.data_dir"


# --- configuration and data ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class InjectionSpec:
    """The run's sizes (config ``entropy.injection``; keys not listed here are ignored)."""

    paraphrase_items: int = 4
    once_items: int = 6
    injections: int = 10
    steps: int = 40
    batch_size: int = 4
    max_tokens: int = 128
    knowledge_tokens: int = 120
    probe_every: int = 20
    lr: float = 3e-4
    seed: int = 0

    @classmethod
    def from_config(cls, spec: Mapping) -> InjectionSpec:
        names = cls.__dataclass_fields__
        kwargs = {k: v for k, v in dict(spec).items() if k in names}
        return cls(**kwargs)

    def __post_init__(self):
        if self.injections < 1 or self.steps < self.injections:
            raise ValueError(f"entropy.injection: steps ({self.steps}) must be at least injections ({self.injections})")
        if min(self.batch_size, self.max_tokens, self.knowledge_tokens, self.probe_every) < 1 or self.lr <= 0:
            raise ValueError(f"entropy.injection: sizes and lr must be positive: {self}")
        if self.paraphrase_items < 0 or self.once_items < 0:
            raise ValueError(f"entropy.injection: item counts must be >= 0: {self}")

    @property
    def interval(self) -> int:
        """Optimiser steps from one injection to the next."""
        return self.steps // self.injections


def data_paths(data_dir: str | Path | None) -> dict[str, Path]:
    """The two item files in ``data_dir`` ({kind: path}); a ValueError naming the config key and the
    expected files when ``data_dir`` is unset or lacks them."""
    expected = ", ".join(DATA_FILES.values())
    if not data_dir:
        raise ValueError(f"{CONFIG_KEY} is not set: the injection run (entropy.injection.enabled: true) needs a "
                         f"folder holding {expected}")
    paths = {kind: Path(data_dir) / name for kind, name in DATA_FILES.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise ValueError(f"{CONFIG_KEY} = {str(data_dir)!r} lacks {', '.join(missing)} (expected: {expected})")
    return paths


def load_items(path: str | Path, n: int) -> list[dict]:
    """The first ``n`` items of an item file, each with its index in the file as ``item``."""
    items = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(items, list) or len(items) < n:
        raise ValueError(f"{path}: expected a list of at least {n} items")
    out = []
    for i, item in enumerate(items[:n]):
        missing = [f for f in ITEM_FIELDS if f not in item]
        if missing:
            raise ValueError(f"{path}: item {i} lacks {missing}")
        out.append({**item, "item": i})
    return out


def item_versions(item: Mapping) -> list[str]:
    """An item's texts: version 0 is ``train_context``, then its paraphrases."""
    return [item["train_context"], *item["paraphrases"]]


# --- pure pieces ---------------------------------------------------------------------------------------------


def group_name(k: int) -> int:
    """The seed's name of injection k's data group: ``(k % 10) or 10`` (groups 1..10)."""
    return (k % 10) or 10


@dataclass(frozen=True)
class Injected:
    """One knowledge sequence of the schedule."""

    injection: int
    kind: str  # "paraphrase" | "once"
    item: int  # position among the run's items of this kind
    version: int  # 0 = train_context, v >= 1 = paraphrases[v - 1]

    @property
    def group(self) -> int:
        return group_name(self.injection)


def injection_schedule(n_paraphrase: int, n_once: int, injections: int,
                       versions: int | Sequence[int] = 10) -> list[Injected]:
    """Every knowledge sequence, by injection: paraphrase item p at every injection i with version
    ``i mod versions[p]``; once item j once, at injection ``j * injections // n_once`` (spread evenly),
    version 0. Within an injection: paraphrase items first, then once items."""
    counts = [versions] * n_paraphrase if isinstance(versions, int) else list(versions)
    if len(counts) != n_paraphrase or any(c < 1 for c in counts):
        raise ValueError(f"need a positive version count for each of the {n_paraphrase} paraphrase items, got {counts}")
    once_at = [j * injections // n_once for j in range(n_once)]
    out = []
    for i in range(injections):
        out += [Injected(i, "paraphrase", p, i % counts[p]) for p in range(n_paraphrase)]
        out += [Injected(i, "once", j, 0) for j in range(n_once) if once_at[j] == i]
    return out


def place_sequences(schedule: Sequence[Injected], steps: int, injections: int,
                    batch_size: int) -> dict[tuple[int, int], int]:
    """(step, row) -> index into ``schedule``: injection i starts at step ``i * (steps // injections)``;
    its sequences take that step's rows in order and spill into the following steps' rows. A
    ValueError when an injection has more sequences than rows before the next injection."""
    interval = steps // injections
    if interval < 1:
        raise ValueError(f"steps ({steps}) must be at least injections ({injections})")
    slots = interval * batch_size
    out, used = {}, {}
    for index, entry in enumerate(schedule):
        n = used.get(entry.injection, 0)
        if n >= slots:
            raise ValueError(f"injection {entry.injection} has more than {slots} sequences "
                             f"({interval} steps x {batch_size} rows before the next one)")
        out[(entry.injection * interval + n // batch_size, n % batch_size)] = index
        used[entry.injection] = n + 1
    return out


def prepend_truncate(knowledge: Sequence[int], row: Sequence[int], max_tokens: int) -> list[int]:
    """The knowledge tokens in front of the row's, the whole cut to ``max_tokens`` (the row's tail goes)."""
    return (list(knowledge) + list(row))[:max_tokens]


def generic_windows(token_lists: Sequence[Sequence[int]], n: int, width: int) -> list[list[int]]:
    """``n`` non-overlapping windows of exactly ``width`` tokens, taken round-robin over the documents
    (every document's first window, then every document's second, ...), so the rows come from many
    documents; a ValueError when the documents hold fewer."""
    per_doc = [[list(ids[s : s + width]) for s in range(0, len(ids) - width + 1, width)] for ids in token_lists]
    out: list[list[int]] = []
    depth = 0
    while len(out) < n and any(depth < len(w) for w in per_doc):
        out += [w[depth] for w in per_doc if depth < len(w)]
        depth += 1
    if len(out) < n:
        raise ValueError(f"the generic texts hold only {len(out)} windows of {width} tokens; {n} are needed")
    return out[:n]


def filter_probes(item: Mapping, kept_context: str, kept_versions: Sequence[str] = ()) -> list[dict]:
    """The item's probes whose target lies inside the trained text.

    ``kept_context``: the kept (cut) prefix of ``train_context``. A mem probe is kept when its input
    occurs in ``train_context`` and the target's first occurrence after it ends within the kept prefix
    (character offsets). A gen/hard_gen probe is kept when its target occurs verbatim in the kept
    prefix or in one of ``kept_versions`` (the kept texts of the other versions trained on).
    Each probe: probe_type, probe (index among its type), input, target, and ``char_end`` (mem only).
    """
    context = item["train_context"]
    if not context.startswith(kept_context):
        raise ValueError("kept_context must be a prefix of the item's train_context")
    kept = []
    for probe_type in PROBE_TYPES:
        for k, (prompt, target) in enumerate(zip(item[f"{probe_type}_input"], item[f"{probe_type}_target"])):
            if probe_type == "mem":
                start = context.find(prompt)
                at = context.find(target, start + len(prompt)) if start >= 0 else -1
                end = at + len(target) if at >= 0 else -1
                ok = 0 <= end <= len(kept_context)
            else:
                end, ok = -1, any(target in text for text in (kept_context, *kept_versions))
            if ok:
                kept.append({"probe_type": probe_type, "probe": k, "input": prompt, "target": target, "char_end": end})
    return kept


def acquisition(k_start: float, k_end: float) -> float:
    """``(K_end - K_start) / |K_start|``: > 0 when the (negative) log-probability rises; nan at K_start = 0."""
    if k_start == 0 or not (math.isfinite(k_start) and math.isfinite(k_end)):
        return float("nan")
    return (k_end - k_start) / abs(k_start)


def probe_steps(steps: int, every: int) -> list[int]:
    """Step 0, every ``every`` steps, and the last step."""
    return sorted({0, steps, *range(every, steps + 1, every)})


# --- tokens --------------------------------------------------------------------------------------------------


def cut_text(tokenizer, text: str, n_tokens: int) -> tuple[list[int], str]:
    """(the first ``n_tokens`` token ids of ``text``, no special tokens; the text they cover)."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"][:n_tokens]), enc["offset_mapping"][:n_tokens]
    end = max((e for _, e in offsets), default=0)
    return ids, text[:end]


def encode_documents(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


# --- the run -------------------------------------------------------------------------------------------------


@dataclass
class InjectionResult:
    probes: pd.DataFrame  # one row per probe per probe step
    run: dict  # losses, perplexities, schedule, probe counts, seconds


def prepare_run(tokenizer, paraphrase_items: Sequence[Mapping], once_items: Sequence[Mapping],
                train_rows: Sequence[Sequence[int]], spec: InjectionSpec):
    """(batches: steps x batch_size token rows; injected: one record per row that carries knowledge;
    probes: the kept probes, with their item's kind and index in its file) for the given items and
    generic rows (at least steps x batch_size of them)."""
    if len(train_rows) < spec.steps * spec.batch_size:
        raise ValueError(f"{spec.steps} steps x {spec.batch_size} rows need {spec.steps * spec.batch_size} generic rows, "
                         f"got {len(train_rows)}")
    items = {"paraphrase": list(paraphrase_items), "once": list(once_items)}
    schedule = injection_schedule(len(items["paraphrase"]), len(items["once"]), spec.injections,
                                  [len(item_versions(it)) for it in items["paraphrase"]])
    placed = place_sequences(schedule, spec.steps, spec.injections, spec.batch_size)
    keep = min(spec.knowledge_tokens, spec.max_tokens)  # what of a sequence survives in its row
    cut: dict[tuple[str, int, int], tuple[list[int], str]] = {}
    for e in schedule:
        key = (e.kind, e.item, e.version)
        if key not in cut:
            cut[key] = cut_text(tokenizer, item_versions(items[e.kind][e.item])[e.version], keep)
    batches = [[list(train_rows[s * spec.batch_size + r]) for r in range(spec.batch_size)] for s in range(spec.steps)]
    rows = []
    for (step, row), index in sorted(placed.items()):
        e = schedule[index]
        ids, _ = cut[(e.kind, e.item, e.version)]
        batches[step][row] = prepend_truncate(ids, batches[step][row], spec.max_tokens)
        rows.append({"step": step, "row": row, "injection": e.injection, "group": e.group, "kind": e.kind,
                     "item": int(items[e.kind][e.item].get("item", e.item)), "version": e.version,
                     "knowledge_tokens": len(ids)})
    probes = []
    for kind in KINDS:
        for n, item in enumerate(items[kind]):
            trained = sorted({e.version for e in schedule if e.kind == kind and e.item == n})
            if 0 not in trained:  # mem probes need train_context itself; never the case with this schedule
                raise ValueError(f"{kind} item {n} is never trained on its train_context")
            others = [cut[(kind, n, v)][1] for v in trained if v != 0]
            for p in filter_probes(item, cut[(kind, n, 0)][1], others):
                probes.append({"kind": kind, "item": int(item.get("item", n)), **p})
    return batches, rows, probes


def _lm_loss(model, rows: Sequence[Sequence[int]], pad: int, embeddings: bool):
    """Mean next-token cross-entropy over the real tokens of right-padded rows (train.py's
    ``answer_loss`` with every token after a row's first as its target, one mean over the batch)."""
    from workflow_scripts.models.encoding import pad_right
    from workflow_scripts.training.train import answer_loss, embedding_leaf

    device = next(model.parameters()).device
    input_ids, mask = pad_right(rows, pad)
    input_ids, mask = input_ids.to(device), mask.to(device)
    embeds = embedding_leaf(model, input_ids) if embeddings else None
    loss = answer_loss(model, input_ids, mask.long(), mask[:, 1:], inputs_embeds=embeds, per_token=True)
    return loss, input_ids, embeds


def perplexity(model, rows: Sequence[Sequence[int]], pad: int, batch_size: int = 8) -> float:
    """exp of the mean next-token loss over all real tokens of ``rows`` (nan without rows)."""
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(rows), batch_size):
            part = [r for r in rows[s : s + batch_size] if len(r) > 1]
            if not part:
                continue
            loss, _, _ = _lm_loss(model, part, pad, embeddings=False)
            n = sum(len(r) - 1 for r in part)
            total, count = total + float(loss) * n, count + n
    return math.exp(total / count) if count else float("nan")


def run_injection(model, tokenizer, paraphrase_items: Sequence[Mapping], once_items: Sequence[Mapping],
                  train_texts: Sequence[str], heldout_texts: Sequence[str], spec: InjectionSpec,
                  probe_batch_size: int = 32) -> InjectionResult:
    """Train ``model`` in place as described in the module docstring; the probe scores and the run record.

    The optimiser steps reuse the one training routine's pieces (:mod:`workflow_scripts.training.train`:
    its loss, AdamW, clipping and precision settings of :class:`TrainConfig`'s defaults: constant rate,
    no weight decay, clipping at 1.0, fp32); the routine itself is not called because it shuffles rows
    into batches every epoch, while injections need given rows at given steps and probes between steps.
    """
    import torch

    from workflow_scripts.evaluation.exact_match import score_targets
    from workflow_scripts.models.encoding import pad_id
    from workflow_scripts.runtime import keep_freed_memory
    from workflow_scripts.training.train import TrainConfig, add_embedding_rows, autocast_for, clip_in_step

    start = time.perf_counter()
    cfg = TrainConfig(lr=spec.lr, batch_size=spec.batch_size, seed=spec.seed)
    n_rows = spec.steps * spec.batch_size
    order = list(range(len(train_texts)))
    random.Random(f"injection-rows|{spec.seed}").shuffle(order)
    train_rows = generic_windows(encode_documents(tokenizer, [train_texts[i] for i in order]), n_rows, spec.max_tokens)
    heldout = [ids[: spec.max_tokens] for ids in encode_documents(tokenizer, heldout_texts)]
    batches, injected, probes = prepare_run(tokenizer, paraphrase_items, once_items, train_rows, spec)
    if not probes:
        raise ValueError("no probe target lies inside the kept knowledge text; raise knowledge_tokens")
    prompts, targets = [p["input"] for p in probes], [p["target"] for p in probes]
    pad = pad_id(tokenizer)
    device = next(model.parameters()).device
    precision = autocast_for(cfg, device)
    if device.type == "cpu":
        keep_freed_memory()
    torch.manual_seed(cfg.seed)
    requires = {n: p.requires_grad for n, p in model.named_parameters()}
    params = list(model.parameters())
    for p in params:
        p.requires_grad_(True)
    embedding_rows = model.get_input_embeddings().weight.requires_grad
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  fused=all(p.device.type == "cpu" for p in params) or None)
    scored, records = [], []
    checkpoints = probe_steps(spec.steps, spec.probe_every)

    def probe(step: int) -> None:
        t0 = time.perf_counter()
        model.eval()
        scores = score_targets(model, tokenizer, prompts, targets, batch_size=probe_batch_size)
        ppl = perplexity(model, heldout, pad)
        model.train()
        scored.append(pd.DataFrame(probes).drop(columns="char_end").assign(
            step=step, logprob=scores.mean_logprob.to_numpy(), correct=scores.correct.to_numpy(),
            n_target_tokens=scores.n_target_tokens.to_numpy()))
        records.append({"step": step, "heldout_perplexity": ppl, "seconds": time.perf_counter() - t0})
        log.info("step %d: mean probe log-prob %.3f, held-out perplexity %.2f", step, float(scores.mean_logprob.mean()), ppl)

    losses = []
    try:
        probe(0)
        model.train()
        for step in range(spec.steps):
            with precision:
                loss, input_ids, embeds = _lm_loss(model, batches[step], pad, embedding_rows)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if embeds is not None:
                add_embedding_rows(model, input_ids, embeds)
            if cfg.max_grad_norm:
                clip_in_step(optimizer, params, cfg.max_grad_norm)
            optimizer.step()
            losses.append(float(loss.detach()))
            log.info("step %d/%d: loss %.4f (%.0f s)", step + 1, spec.steps, losses[-1], time.perf_counter() - start)
            if step + 1 in checkpoints:
                probe(step + 1)
    finally:
        model.eval()
        for n, p in model.named_parameters():
            p.requires_grad_(requires.get(n, True))
    run = {"spec": asdict(spec), "train_config": asdict(cfg), "losses": losses, "probe_steps": records,
           "injected": injected, "probes_kept": len(probes),
           "probes_kept_by_kind": {k: sum(p["kind"] == k for p in probes) for k in KINDS},
           "heldout_rows": len(heldout), "heldout_tokens": sum(len(r) for r in heldout),
           "trained_tokens": sum(len(r) for b in batches for r in b),
           "seconds": round(time.perf_counter() - start, 2)}
    return InjectionResult(pd.concat(scored, ignore_index=True), run)


# --- metrics and report --------------------------------------------------------------------------------------


def injection_metrics(probes: pd.DataFrame) -> pd.DataFrame:
    """Per item kind and probe type (plus ``all`` types): probes, K at the first and last step,
    acquisition A, exact-match counts at both steps with 95 % Wilson intervals."""
    from workflow_scripts.evaluation.stats import wilson

    first, last = probes.step.min(), probes.step.max()
    rows = []
    for kind in [k for k in KINDS if k in set(probes.kind)]:
        part = probes[probes.kind == kind]
        for probe_type in ["all", *[t for t in PROBE_TYPES if t in set(part.probe_type)]]:
            sel = part if probe_type == "all" else part[part.probe_type == probe_type]
            a, b = sel[sel.step == first], sel[sel.step == last]
            k0, k1 = float(a.logprob.mean()), float(b.logprob.mean())
            e0, e1, n = int(a.correct.sum()), int(b.correct.sum()), len(a)
            (lo0, hi0), (lo1, hi1) = wilson(e0, n), wilson(e1, n)
            rows.append({"kind": kind, "probe_type": probe_type, "probes": n, "items": int(a.item.nunique()),
                         "K_start": k0, "K_end": k1, "A": acquisition(k0, k1), "em_start": e0, "em_start_lo": lo0,
                         "em_start_hi": hi0, "em_end": e1, "em_end_lo": lo1, "em_end_hi": hi1,
                         "step_start": int(first), "step_end": int(last)})
    return pd.DataFrame(rows)


def checkpoint_injection(model_dir: str, name: str, data: Mapping[str, str], spec_config: Mapping, text_source: str,
                         heldout_texts: int, text_seed: int, out: Mapping[str, str]) -> pd.DataFrame:
    """One start checkpoint's injection run: probes (Parquet), the metrics summary (Parquet) and the
    run record (JSON). Held-out texts are knowledge entropy's fixed text set
    (:func:`~workflow_scripts.entropy.experiment.entropy_texts`); training rows come from the source's
    other texts."""
    from workflow_scripts.entropy.experiment import entropy_texts
    from workflow_scripts.io import write_json, write_parquet
    from workflow_scripts.models.loading import load_model
    from workflow_scripts.remix.textsources import prose_texts

    spec = InjectionSpec.from_config(spec_config)
    missing = [f"{kind}: {path}" for kind, path in data.items() if not Path(path).is_file()]
    if missing or set(data) != set(DATA_FILES):
        raise ValueError(f"{CONFIG_KEY}: the item files are missing ({'; '.join(missing) or sorted(data)}); expected "
                         f"{', '.join(DATA_FILES.values())}")
    paraphrase = load_items(data["paraphrase"], spec.paraphrase_items)
    once = load_items(data["once"], spec.once_items)
    heldout = entropy_texts(text_source, heldout_texts, text_seed)
    held = set(heldout)
    train_texts = [t for t in prose_texts(text_source) if t not in held and len(t.split()) >= 20]
    model, tok = load_model(model_dir, dtype="float32")
    result = run_injection(model, tok, paraphrase, once, train_texts, heldout, spec)
    probes = result.probes.assign(checkpoint=name)
    summary = injection_metrics(probes).assign(checkpoint=name)
    first, last = result.run["probe_steps"][0], result.run["probe_steps"][-1]
    summary = summary.assign(heldout_ppl_start=first["heldout_perplexity"], heldout_ppl_end=last["heldout_perplexity"])
    write_parquet(probes, out["probes"])
    write_parquet(summary, out["summary"])
    write_json({"checkpoint": name, "text_source": text_source, **result.run}, out["run"])
    return summary


def write_injection_report(summaries: Sequence[str], probe_tables: Sequence[str], runs: Sequence[str], model: str,
                           out: Mapping[str, str]) -> pd.DataFrame:
    """``report/entropy_injection.md``, its table (CSV) and the probe log-prob-by-step figure."""
    from workflow_scripts.io import write_text
    from workflow_scripts.reports.plotting import pyplot, save_figure

    summary = pd.concat([pd.read_parquet(p) for p in summaries], ignore_index=True)
    probes = pd.concat([pd.read_parquet(p) for p in probe_tables], ignore_index=True)
    records = [json.loads(Path(p).read_text(encoding="utf-8")) for p in runs]
    summary.to_csv(out["table"], index=False)
    spec = records[0]["spec"]
    injection_steps = [i * (spec["steps"] // spec["injections"]) for i in range(spec["injections"])]

    plt = pyplot()
    names = list(dict.fromkeys(summary.checkpoint))
    fig, axes = plt.subplots(1, len(PROBE_TYPES), figsize=(10, 3.4), sharey=True)
    styles = ["-", "--", ":", "-."]
    for ax, probe_type in zip(axes, PROBE_TYPES):
        part = probes[probes.probe_type == probe_type]
        for c, name in enumerate(names):
            for kind, colour in zip(KINDS, ("tab:blue", "tab:orange")):
                sel = part[(part.checkpoint == name) & (part.kind == kind)]
                if sel.empty:
                    continue
                curve = sel.groupby("step").logprob.mean()
                ax.plot(curve.index, curve.values, styles[c % len(styles)], marker="o", ms=3, color=colour,
                        label=f"{kind} ({name})")
        for s in injection_steps:
            ax.axvline(s, color="0.85", lw=0.6, zorder=0)
        ax.set_title(f"{probe_type} probes", fontsize=9)
        ax.set_xlabel("optimiser step")
    axes[0].set_ylabel("mean target log-prob")
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:
        h, lab = ax.get_legend_handles_labels()
        handles += [x for x, y in zip(h, lab) if y not in labels]
        labels += [y for y in lab if y not in labels]
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=max(1, len(labels)))
    fig.suptitle(f"Fictional-knowledge injection ({model}); grey lines: injections", fontsize=9)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    save_figure(fig, out["figure"])

    lines = [f"# Fictional-knowledge injection ({model})", "",
             f"Continual language-model training of each start checkpoint on generic text ({spec['steps']} AdamW steps "
             f"at lr {spec['lr']:g}, {spec['batch_size']} rows of {spec['max_tokens']} tokens), with an injection every "
             f"{spec['steps'] // spec['injections']} steps ({spec['injections']} in all): {spec['paraphrase_items']} "
             f"paraphrase items at every injection (a new version each time) and {spec['once_items']} items injected "
             f"once, each cut to {spec['knowledge_tokens']} tokens and put in front of a batch row. Only probes whose "
             f"target lies inside the trained (cut) text are scored. K: mean target log-probability; "
             f"A = (K_end − K_start) / |K_start| (> 0: the probes' log-probability rose); exact match: teacher-forced, "
             f"every target token the argmax, with 95 % Wilson intervals. Retention of the model's known facts is not "
             f"measured here.", ""]
    for r in records:
        ppl = r["probe_steps"]
        lines.append(f"- **{r['checkpoint']}**: {r['probes_kept']} probes kept "
                     f"({', '.join(f'{k} {v}' for k, v in r['probes_kept_by_kind'].items())}); training loss "
                     f"{r['losses'][0]:.3f} → {r['losses'][-1]:.3f}; held-out perplexity ({r['heldout_rows']} texts, "
                     f"{r['heldout_tokens']} tokens) {ppl[0]['heldout_perplexity']:.2f} → {ppl[-1]['heldout_perplexity']:.2f}; "
                     f"{r['seconds']:.0f} s.")
    lines += ["", "| checkpoint | kind | probe type | n | K start | K end | A | exact match start | exact match end |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in summary.itertuples():
        lines.append(f"| {r.checkpoint} | {r.kind} | {r.probe_type} | {r.probes} | {r.K_start:.3f} | {r.K_end:.3f} | "
                     f"{r.A:+.3f} | {r.em_start}/{r.probes} [{r.em_start_lo:.2f}, {r.em_start_hi:.2f}] | "
                     f"{r.em_end}/{r.probes} [{r.em_end_lo:.2f}, {r.em_end_hi:.2f}] |")
    lines += ["", "Once items are scored at the end regardless of when they were injected, so their A mixes learning "
              "and forgetting; with a handful of probes per kind the intervals are wide.", ""]
    write_text("\n".join(lines), out["summary"])
    return summary
