"""The embedded starter facts: relations (``starter/relations.yaml``) and facts (``starter/facts.csv``),
written for this project, turned into CounterFact-schema records.

Per fact the builder derives, deterministically:
- ``target_new``: another object of the same relation (a plausible wrong answer of the same type),
  drawn with the objects' frequencies among the relation's other facts, so learning counterfacts
  keeps a relation's object distribution (uniform draws over a small pool, such as five continents,
  would shift its prior toward rare objects); never an object that is also true of the subject
  (multi-valued relations: Cyprus has two official languages);
- ``paraphrase_prompts``: the relation's paraphrase templates with the subject;
- ``neighborhood_prompts``: prompts of *other* facts whose true object is the same (their answer is
  this fact's ``target_true`` too, so an edit of this fact should leave them alone);
- ``attribute_prompts``: prompts of facts whose true object is this fact's ``target_new``;
- ``generation_prompts``: the relation's open-ended templates with the subject.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path

import yaml

from workflow_scripts.facts.schema import fill, normalise_records

STARTER_DIR = Path(__file__).resolve().parent / "starter"
MAX_PROMPTS = 10


@dataclass(frozen=True)
class Relation:
    id: str
    name: str
    prompt: str
    paraphrases: tuple[str, ...]
    generation: tuple[str, ...]
    subject_kind: str
    object_kind: str


def load_relations(path: Path = STARTER_DIR / "relations.yaml") -> dict[str, Relation]:
    with open(path, encoding="utf-8") as fh:
        items = yaml.safe_load(fh)
    return {
        str(it["id"]): Relation(
            id=str(it["id"]),
            name=it["name"],
            prompt=it["prompt"],
            paraphrases=tuple(it["paraphrases"]),
            generation=tuple(it["generation"]),
            subject_kind=it["subject_kind"],
            object_kind=it["object_kind"],
        )
        for it in items
    }


def load_starter_rows(path: Path = STARTER_DIR / "facts.csv") -> list[dict]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def starter_records(seed: int = 0) -> list[dict]:
    """All starter facts as validated CounterFact records."""
    relations = load_relations()
    rows = load_starter_rows()
    objects_by_relation: dict[str, list[str]] = {}  # every fact's object, repeats kept (frequencies)
    true_of: dict[tuple[str, str], set[str]] = {}  # (relation, subject) -> every true object
    for row in rows:
        objects_by_relation.setdefault(row["relation_id"], []).append(row["target_true"])
        true_of.setdefault((row["relation_id"], row["subject"]), set()).add(row["target_true"])
    by_object: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_object.setdefault(row["target_true"], []).append(i)

    def prompt_of(i: int) -> str:
        row = rows[i]
        return fill(relations[row["relation_id"]].prompt, row["subject"])

    records = []
    for i, row in enumerate(rows):
        rel = relations[row["relation_id"]]
        subject, true = row["subject"], row["target_true"]
        rng = random.Random(f"{seed}|{rel.id}|{subject}")
        new = rng.choice([o for o in objects_by_relation[rel.id] if o not in true_of[(rel.id, subject)]])
        neighbours = [prompt_of(j) for j in by_object[true] if rows[j]["subject"] != subject]
        attributes = [prompt_of(j) for j in by_object.get(new, [])]
        records.append(
            {
                "case_id": i,
                "pararel_idx": None,
                "requested_rewrite": {
                    "prompt": rel.prompt,
                    "relation_id": rel.id,
                    "subject": subject,
                    "target_true": {"str": true, "id": None},
                    "target_new": {"str": new, "id": None},
                },
                "paraphrase_prompts": [fill(p, subject) for p in rel.paraphrases],
                "neighborhood_prompts": neighbours[:MAX_PROMPTS],
                "attribute_prompts": attributes[:MAX_PROMPTS],
                "generation_prompts": [fill(p, subject) for p in rel.generation],
                "source": "starter",
            }
        )
    return normalise_records(records, "starter facts")
