"""The three classes, balanced, with the probe texts and a group id per fact.

- familiar: facts the model gets right (pre-trained setting: known by the base model; fine-tuned
  setting: facts it was fine-tuned on and now gets right), probed with ``target_true``;
- dissonant: the same facts with ``target_new``;
- novel: invented facts (their ``target_true``).
Probe texts are ``prompt + " " + target`` (probe "prompt") or ``paraphrase_prompts[0] + " " + target``
(probe "paraphrase"). ``group`` identifies the fact, so the familiar and dissonant versions of one
fact can be kept on the same side of every split.
"""

from __future__ import annotations

import random

import pandas as pd

from workflow_scripts.facts.schema import flat_facts

CLASSES = ("familiar", "dissonant", "novel")


def build_samples(
    facts: list[dict], known_case_ids: set[int], novel: list[dict], n_per_class: int, seed: int
) -> pd.DataFrame:
    """One row per (sample, probe): sample_id, group, label, probe, text."""
    flat = flat_facts(facts)
    known = flat[flat.case_id.isin(known_case_ids)]
    novel_flat = flat_facts(novel)
    n = min(n_per_class, len(known), len(novel_flat))
    if n < 2:
        raise ValueError(f"too few samples per class ({n}): {len(known)} familiar facts, {len(novel_flat)} novel")
    rng = random.Random(f"samples|{seed}")
    fam = known.iloc[sorted(rng.sample(range(len(known)), n))]
    nov = novel_flat.iloc[sorted(rng.sample(range(len(novel_flat)), n))]
    rows = []
    for label, table, target in (("familiar", fam, "target_true"), ("dissonant", fam, "target_new"),
                                 ("novel", nov, "target_true")):
        for r in table.itertuples():
            for probe, prompt in (("prompt", r.prompt), ("paraphrase", r.paraphrase_prompt or r.prompt)):
                rows.append({"group": int(r.case_id), "label": label, "probe": probe,
                             "text": f"{prompt.rstrip()} {getattr(r, target)}"})
    out = pd.DataFrame(rows)
    out.insert(0, "sample_id", range(len(out)))
    return out


def make_samples(setting: str, facts_path: str, novel_path: str, slices_path: str, known_path: str,
                 out_path: str, n_per_class: int, seed: int) -> pd.DataFrame:
    """Samples of one setting. Pre-trained: familiar = facts outside H the base model knows (probe
    table); fine-tuned: familiar = facts of slice F known after fine-tuning (known table)."""
    from workflow_scripts.facts.schema import read_facts
    from workflow_scripts.io import write_parquet
    from workflow_scripts.scenarios.slices import known_case_ids

    facts = read_facts(facts_path)
    slices = pd.read_parquet(slices_path)
    known_table = pd.read_parquet(known_path)
    if setting == "pretrained":
        allowed = set(slices.case_id[slices.slice != "H"])
    elif setting == "finetuned":
        allowed = set(slices.case_id[slices.slice == "F"])
    else:
        raise ValueError(f"unknown setting {setting!r}")
    known = known_case_ids(known_table) & allowed  # a probe table's target_true rows, or a known table
    samples = build_samples([r for r in facts if r["case_id"] in allowed], known, read_facts(novel_path),
                            n_per_class, seed)
    write_parquet(samples, out_path)
    return samples
