"""REMIX at CPU scale: memorise a fact set (stage 1), train on other data (stage 2), measure forgetting.

A *cell* is one stage-1 mixing (``none`` or ``random`` words) x one stage-2 data type (``facts``:
the set's second half of facts; ``prose``, ``code``, ``arithmetic``: as many rows of that text) x one
stage-2 mixing (``none`` or ``generic`` prose). Mixing adds ``int(ratio x rows)`` rows
(:func:`~workflow_scripts.remix.mixing.mixing_count`) shuffled into the same seeded random batches
(:class:`~workflow_scripts.training.plugins.ExtraRows`); every stage uses the project's one training
routine with the stage checkpoints' settings, labels of padding ignored (the seed trains them).

One job per (set, stage-1 mixing): stage 1 once (or checkpoint A for the fold's facts without
mixing), then every stage-2 cell from a copy of its weights. Each model is scored on the stage-1
facts by teacher-forced exact match (the project's metric) and by greedy-generation exact match
(REMIX's metric, :func:`generation_exact_match`), and by the logit lens (the layer where each answer
first becomes the top token and stays there).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from workflow_scripts.evaluation.evaluator import greedy_continuations
from workflow_scripts.remix.cells import AFTER_STAGE1, MIXING, STAGE1, STAGE2, Cell, cells_from_grids
from workflow_scripts.evaluation.exact_match import score_targets
from workflow_scripts.remix.lens import lens_table
from workflow_scripts.remix.mixing import mixing_count
from workflow_scripts.remix.textsources import source_rows
from workflow_scripts.training.plugins import ExtraRows
from workflow_scripts.training.train import TrainConfig, train

log = logging.getLogger(__name__)

ROW_KIND = {"prose": "generic", "code": "code", "arithmetic": "arithmetic"}  # stage-2 data -> text source kind


@dataclass(frozen=True)
class FactRows:
    """Facts as training and scoring rows."""

    case_ids: tuple[int, ...]
    prompts: tuple[str, ...]
    targets: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.prompts)


def fact_rows(records: Sequence[dict], case_ids: Sequence[int] | None = None) -> FactRows:
    """Each record's main prompt and true target (in ``case_ids`` order when given)."""
    from workflow_scripts.facts.schema import flat_facts

    by_id = {int(r["case_id"]): r for r in records}
    chosen = [by_id[int(c)] for c in case_ids] if case_ids is not None else list(records)
    flat = flat_facts(chosen)
    return FactRows(tuple(int(c) for c in flat.case_id), tuple(flat.prompt), tuple(flat.target_true))


def kvr_sets(spec: dict) -> tuple[list[dict], list[int], list[int]]:
    """The key-value records and their two halves' case ids (stage 1, stage 2)."""
    from workflow_scripts.remix.kvr import kvr_records

    records = kvr_records(int(spec["n"]), int(spec["key_chars"]), int(spec["value_chars"]), seed=int(spec["seed"]))
    ids = [int(r["case_id"]) for r in records]
    half = len(ids) // 2
    return records, ids[:half], ids[half:]


def mixing_rows(kind: str, n_rows: int, ratio: float, seed: str, tokenizer, source: str,
                fallback_texts: Sequence[str] | None = None, window: Sequence[int] | None = None) -> pd.DataFrame:
    """``int(ratio x n_rows)`` rows of one text kind (an error, not a truncation, when too few exist).
    ``fallback_texts``: words for random rows when the tokenizer has no word-like tokens (tiny models);
    ``window``: (prompt, target) words or code tokens per row (None: the kind's default)."""
    n_in, n_out = window if window is not None else (None, None)
    return source_rows(kind, mixing_count(n_rows, ratio), seed, tokenizer=tokenizer, source=source,
                       fallback_texts=fallback_texts, n_in=n_in, n_out=n_out)


def stage2_rows(stage2: str, facts: FactRows, fold: int, tokenizer, source: str,
                window: Sequence[int] | None = None) -> tuple[list[str], list[str]]:
    """Stage-2 training rows: the second fact set, or as many rows of prose, code or arithmetic
    (``window``: words or code tokens of prompt and target; arithmetic problems have their own)."""
    if stage2 == "facts":
        return list(facts.prompts), list(facts.targets)
    n_in, n_out = window if window is not None and stage2 != "arithmetic" else (None, None)
    rows = source_rows(ROW_KIND[stage2], len(facts), f"remix|{stage2}|{fold}|2", tokenizer=tokenizer, source=source,
                       n_in=n_in, n_out=n_out)
    return rows.prompt.tolist(), rows.target.tolist()


_END = re.compile(r"\n|[.!?;,](?=\s|$)")


def cut_answer(text: str) -> str:
    """A generated continuation up to its first line break or sentence-ending punctuation, stripped."""
    match = _END.search(text)
    return (text[: match.start()] if match else text).strip()


def normalise(text: str) -> str:
    return " ".join(text.strip().lower().split())


def starts_with_answer(text: str, target: str) -> bool:
    """The continuation begins with the target (case and spacing ignored), followed by a non-word
    character or nothing: " Paris Paris" and " Paris." answer "Paris", " Parisian" does not."""
    text, target = normalise(text), normalise(target)
    return text.startswith(target) and (len(text) == len(target) or not text[len(target)].isalnum())


def stops_after_answer(text: str, target: str) -> bool:
    """REMIX's strict form: the continuation, cut at its first line break or sentence end, is the target."""
    return normalise(cut_answer(text)) == normalise(target)


def generation_exact_match(model, tokenizer, prompts: Sequence[str], targets: Sequence[str], extra_tokens: int = 3,
                           batch_size: int = 32) -> tuple[np.ndarray, list[str]]:
    """REMIX's metric (greedy generation, compared with the answer) on facts that carry no end marker:
    greedy decoding of the target's token count plus ``extra_tokens`` new tokens must begin with the
    answer (:func:`starts_with_answer`). REMIX also requires the model to stop
    (:func:`stops_after_answer`); facts trained as plain completions never teach that (fine-tuned
    SmolLM2 continues "Paris Paris Paris"), so the strict form is recorded but not the headline.
    Returns (hits, continuations) in input order."""
    from workflow_scripts.models.encoding import encode_pair

    budgets = [encode_pair(tokenizer, p, t).n_target + extra_tokens for p, t in zip(prompts, targets)]
    texts = [""] * len(prompts)
    for budget in sorted(set(budgets)):
        idx = [i for i, b in enumerate(budgets) if b == budget]
        for i, text in zip(idx, greedy_continuations(model, tokenizer, [prompts[i] for i in idx], budget, batch_size)):
            texts[i] = text
    hits = np.array([starts_with_answer(x, t) for x, t in zip(texts, targets)], dtype=bool)
    return hits, texts


def score_stage1(model, tokenizer, facts: FactRows, extra_tokens: int) -> pd.DataFrame:
    """Per stage-1 fact: teacher-forced ``correct``, ``mean_logprob``, greedy ``generation_em`` and the
    lens's ``emergence_layer`` and ``final_rank``."""
    scores = score_targets(model, tokenizer, list(facts.prompts), list(facts.targets))
    hits, texts = generation_exact_match(model, tokenizer, list(facts.prompts), list(facts.targets), extra_tokens)
    lens = lens_table(model, tokenizer, list(facts.prompts), list(facts.targets))
    return pd.DataFrame({
        "case_id": np.array(facts.case_ids, dtype=np.int64),
        "correct": scores.correct.to_numpy(),
        "mean_logprob": scores.mean_logprob.to_numpy(),
        "generation_em": hits,
        "generation_stops": np.array([stops_after_answer(x, t) for x, t in zip(texts, facts.targets)], dtype=bool),
        "continuation": pd.Series(texts, dtype=object),
        "emergence_layer": lens.emergence_layer.to_numpy(),
        "final_rank": lens.final_rank.to_numpy(),
    })


def _train(model, tokenizer, prompts, targets, cfg: TrainConfig, extra: pd.DataFrame | None) -> dict:
    plugins = [] if extra is None or not len(extra) else [ExtraRows(tokenizer, extra.prompt.tolist(), extra.target.tolist())]
    start = time.perf_counter()
    history = train(model, tokenizer, list(prompts), list(targets), cfg, plugins)
    rows = len(prompts) + (0 if extra is None else len(extra))
    return {"epochs": len(history), "steps": len(history) * -(-rows // cfg.batch_size), "rows": len(prompts),
            "mix_rows": 0 if extra is None else len(extra), "final_loss": history[-1]["loss"] if history else float("nan"),
            "seconds": time.perf_counter() - start}


def _reuse(model, model_dir: str, rows: int, cfg: TrainConfig, extra: pd.DataFrame | None) -> dict:
    """Load a cell's result trained elsewhere (the counts are those of the same training here)."""
    from safetensors.torch import load_file
    from pathlib import Path

    if extra is not None and len(extra):
        raise ValueError("only a cell without mixing can reuse a saved model")
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no safetensors weights in {model_dir}")
    state = {}
    for f in files:
        state.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.endswith("lm_head.weight")]:
        raise ValueError(f"{model_dir} does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.tie_weights()
    return {"epochs": cfg.epochs, "steps": cfg.epochs * -(-rows // cfg.batch_size), "rows": rows, "mix_rows": 0,
            "final_loss": float("nan"), "seconds": 0.0, "reused": str(model_dir)}


def run_stage1_arm(model, tokenizer, set_name: str, stage1: str, cells: Sequence[Cell], stage1_facts: FactRows,
                   stage2_facts: FactRows, cfg1: TrainConfig | None, cfg2: TrainConfig, *, ratio: float, fold: int,
                   source: str = "gensim_wiki", extra_tokens: int = 3, window: Sequence[int] | None = None,
                   reused: dict[str, str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stage 1 (``cfg1`` None: ``model`` is already the stage-1 model), then each of ``cells`` (all with
    this ``stage1``) from a copy of the stage-1 weights. ``reused``: cell name -> a saved model that is
    that cell's result, trained elsewhere under the same regime (checkpoint AB is the fold's facts'
    none/facts/none cell); its weights are scored instead of training again.

    Returns (outcomes, cells): one row per stage-1 fact per evaluated model (``cell`` is
    :data:`AFTER_STAGE1` for the stage-1 model), and one row per training stage with its counts."""
    if any(c.stage1 != stage1 for c in cells):
        raise ValueError(f"every cell of this job must have stage1 {stage1!r}")
    stages, outcomes = [], []
    words = list(stage1_facts.prompts + stage1_facts.targets + stage2_facts.prompts + stage2_facts.targets)
    if cfg1 is not None:
        extra = (mixing_rows("random", len(stage1_facts), ratio, f"remix|random|{fold}|1", tokenizer, source, words, window)
                 if stage1 == "random" else None)
        log.info("%s: stage 1 (%s) on %d facts%s", set_name, stage1, len(stage1_facts),
                 f" + {len(extra)} random-word rows" if extra is not None else "")
        stages.append({"cell": AFTER_STAGE1, **_train(model, tokenizer, stage1_facts.prompts, stage1_facts.targets, cfg1, extra)})
    after1 = score_stage1(model, tokenizer, stage1_facts, extra_tokens).assign(cell=AFTER_STAGE1)
    outcomes.append(after1)
    log.info("%s: after stage 1 (%s) %d/%d stage-1 facts known (generation %d)", set_name, stage1,
             after1.correct.sum(), len(after1), after1.generation_em.sum())
    snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for cell in cells:
        model.load_state_dict(snapshot)
        prompts, targets = stage2_rows(cell.stage2, stage2_facts, fold, tokenizer, source, window)
        extra = (mixing_rows("generic", len(prompts), ratio, f"remix|generic|{fold}|2", tokenizer, source, words, window)
                 if cell.mixing == "generic" else None)
        if reused and cell.name in reused:
            stats = _reuse(model, reused[cell.name], len(prompts), cfg2, extra)
        else:
            stats = _train(model, tokenizer, prompts, targets, cfg2, extra)
        learned = score_targets(model, tokenizer, prompts, targets).correct
        after2 = score_stage1(model, tokenizer, stage1_facts, extra_tokens).assign(cell=cell.name)
        outcomes.append(after2)
        stages.append({"cell": cell.name, **stats, "stage2_learned": int(learned.sum()), "stage2_rows": len(prompts)})
        log.info("%s: cell %s: %d/%d stage-1 facts kept, %d/%d stage-2 rows learned (%.0f s)", set_name, cell.name,
                 after2.correct[after1.correct.to_numpy()].sum(), after1.correct.sum(), learned.sum(), len(prompts),
                 stats["seconds"])
    model.load_state_dict(snapshot)
    table = pd.concat(outcomes, ignore_index=True).assign(set=set_name, stage1=stage1)
    stage_table = pd.DataFrame(stages).assign(set=set_name, stage1=stage1)
    return table, stage_table


def job_facts(set_name: str, spec: dict, facts_path: str | None, slices_path: str | None) -> tuple[FactRows, FactRows]:
    """A set's stage-1 and stage-2 facts: the fold's slices A and B, or the two key-value halves."""
    if set_name == "facts":
        from workflow_scripts.facts.schema import read_facts

        slices = pd.read_parquet(slices_path)
        records = read_facts(facts_path)
        return (fact_rows(records, slices.case_id[slices.slice == "A"].tolist()),
                fact_rows(records, slices.case_id[slices.slice == "B"].tolist()))
    if set_name == "kvr":
        records, first, second = kvr_sets(spec["kvr"])
        return fact_rows(records, first), fact_rows(records, second)
    raise ValueError(f"unknown remix set {set_name!r}; known: facts, kvr")


def run_job(model_dir: str, set_name: str, stage1: str, spec: dict, training1: dict | None, training2: dict,
            out_outcomes: str, out_stages: str, facts_path: str | None = None, slices_path: str | None = None,
            reused: dict[str, str] | None = None) -> None:
    """Rule remix_stage: one (set, stage-1 mixing) job; ``training1`` None when ``model_dir`` is
    already the stage-1 model (checkpoint A for the fold's facts without mixing); ``reused``: see
    :func:`run_stage1_arm`."""
    from workflow_scripts.io import write_parquet
    from workflow_scripts.models.loading import load_model

    cells = [c for c in cells_from_grids(spec["cells"]) if c.stage1 == stage1]
    if not cells:
        raise ValueError(f"remix.cells has no cell with stage1 {stage1!r}")
    first, second = job_facts(set_name, spec, facts_path, slices_path)
    model, tokenizer = load_model(model_dir, dtype="float32")
    outcomes, stages = run_stage1_arm(
        model, tokenizer, set_name, stage1, cells, first, second,
        TrainConfig(**training1) if training1 is not None else None, TrainConfig(**training2),
        ratio=float(spec["ratio"]), fold=int(spec["fold"]), source=str(spec.get("source", "gensim_wiki")),
        extra_tokens=int(spec["generation_tokens"]), window=spec.get("window"), reused=reused)
    write_parquet(stages, out_stages)
    write_parquet(outcomes, out_outcomes)


__all__ = ["AFTER_STAGE1", "Cell", "FactRows", "MIXING", "STAGE1", "STAGE2", "cells_from_grids", "cut_answer",
           "fact_rows", "generation_exact_match", "job_facts", "kvr_sets", "mixing_rows", "normalise", "run_job",
           "run_stage1_arm", "score_stage1", "stage2_rows"]
