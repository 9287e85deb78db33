"""The three classes, balanced, with the probe texts and a group id per subject.

- familiar: facts the model gets right (pre-trained setting: known by the base model; fine-tuned
  setting: facts it was fine-tuned on and now gets right), probed with ``target_true``;
- dissonant: the same facts with ``target_new``;
- novel: invented facts (their ``target_true``).
Probe texts are ``prompt + " " + target`` (probe "prompt") or ``paraphrase_prompts[0] + " " + target``
(probe "paraphrase"); ``prompt`` and ``target`` are stored too (the log-probability baseline scores
the target given the prompt). ``case_id`` is the fact; ``group`` holds every sample that shares a
subject, so no subject is ever on both sides of a split: a real fact's group is its subject (the
familiar and dissonant versions of a fact share it), and invented facts are joined into connected
components over their invented subject and ``target_true`` names, because the fictionaliser reuses
invented names across novel facts.
"""

from __future__ import annotations

import random

import pandas as pd

from workflow_scripts.facts.schema import flat_facts

CLASSES = ("familiar", "dissonant", "novel")


def _find(parent: dict, node):
    """Root of ``node`` in a union-find forest (with path halving)."""
    while parent[node] != node:
        parent[node] = parent[parent[node]]
        node = parent[node]
    return node


def subject_groups(real: pd.DataFrame, novel: pd.DataFrame) -> tuple[list[int], list[int]]:
    """Group ids of the rows of two flat fact tables: real facts by subject, invented facts by
    connected components over their subject and ``target_true`` names. Ids are 0, 1, ... in the
    sorted order of each group's smallest name (deterministic); real and invented names never merge."""
    parent: dict = {}

    def union(a, b):
        parent.setdefault(a, a)
        parent.setdefault(b, b)
        ra, rb = _find(parent, a), _find(parent, b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    real_keys = [("real", s) for s in real.subject]
    for key in real_keys:
        union(key, key)
    novel_keys = [("novel", s) for s in novel.subject]
    for key, target in zip(novel_keys, novel.target_true):
        union(key, ("novel", target))
    roots = sorted({_find(parent, k) for k in parent})
    ids = {root: i for i, root in enumerate(roots)}
    return [ids[_find(parent, k)] for k in real_keys], [ids[_find(parent, k)] for k in novel_keys]


def build_samples(
    facts: list[dict], known_case_ids: set[int], novel: list[dict], n_per_class: int, seed: int
) -> pd.DataFrame:
    """One row per (sample, probe): sample_id, group, case_id, subject, label, probe, prompt, target, text."""
    flat = flat_facts(facts)
    known = flat[flat.case_id.isin(known_case_ids)]
    novel_flat = flat_facts(novel)
    n = min(n_per_class, len(known), len(novel_flat))
    if n < 2:
        raise ValueError(f"too few samples per class ({n}): {len(known)} familiar facts, {len(novel_flat)} novel")
    rng = random.Random(f"samples|{seed}")
    fam = known.iloc[sorted(rng.sample(range(len(known)), n))]
    nov = novel_flat.iloc[sorted(rng.sample(range(len(novel_flat)), n))]
    fam_groups, nov_groups = subject_groups(fam, nov)
    fam, nov = fam.assign(group=fam_groups), nov.assign(group=nov_groups)
    rows = []
    for label, table, target in (("familiar", fam, "target_true"), ("dissonant", fam, "target_new"),
                                 ("novel", nov, "target_true")):
        for r in table.itertuples():
            for probe, prompt in (("prompt", r.prompt), ("paraphrase", r.paraphrase_prompt or r.prompt)):
                obj = getattr(r, target)
                rows.append({"group": int(r.group), "case_id": int(r.case_id), "subject": r.subject,
                             "label": label, "probe": probe, "prompt": prompt.rstrip(), "target": obj,
                             "text": f"{prompt.rstrip()} {obj}"})
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
