"""The CounterFact record schema (ROME's), its validation, and Parquet storage.

A record::

    {"case_id": int, "pararel_idx": int | None,
     "requested_rewrite": {"prompt": "The capital of {} is", "relation_id": "P36",
                           "subject": "France",
                           "target_true": {"str": "Paris", "id": "Q90" | None},
                           "target_new": {"str": "Lyon", "id": ... | None}},
     "paraphrase_prompts": [str, ...], "neighborhood_prompts": [str, ...],
     "attribute_prompts": [str, ...], "generation_prompts": [str, ...]}

Stored tables add ``source`` (where the record came from).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from workflow_scripts.io import write_parquet

TARGET = pa.struct([("str", pa.string()), ("id", pa.string())])
FACT_SCHEMA = pa.schema(
    [
        ("case_id", pa.int64()),
        ("pararel_idx", pa.int64()),
        (
            "requested_rewrite",
            pa.struct(
                [
                    ("prompt", pa.string()),
                    ("relation_id", pa.string()),
                    ("subject", pa.string()),
                    ("target_true", TARGET),
                    ("target_new", TARGET),
                ]
            ),
        ),
        ("paraphrase_prompts", pa.list_(pa.string())),
        ("neighborhood_prompts", pa.list_(pa.string())),
        ("attribute_prompts", pa.list_(pa.string())),
        ("generation_prompts", pa.list_(pa.string())),
        ("source", pa.string()),
    ]
)
PROMPT_LISTS = ("paraphrase_prompts", "neighborhood_prompts", "attribute_prompts", "generation_prompts")
REQUIRED_LISTS = ("paraphrase_prompts", "neighborhood_prompts", "generation_prompts")


class FactsError(ValueError):
    """A facts file or record does not follow the CounterFact schema."""


def _nonempty_str(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


def normalise_record(raw: Any, where: str) -> dict:
    """Check one record and return it in canonical form; ``where`` names it in errors."""
    if not isinstance(raw, dict):
        raise FactsError(f"{where}: expected an object, got {type(raw).__name__}")
    if "case_id" not in raw:
        raise FactsError(f"{where}: missing field 'case_id'")
    if not isinstance(raw["case_id"], int) or isinstance(raw["case_id"], bool):
        raise FactsError(f"{where}: field 'case_id' must be an integer, got {raw['case_id']!r}")
    rw = raw.get("requested_rewrite")
    if not isinstance(rw, dict):
        raise FactsError(f"{where}: missing field 'requested_rewrite'")
    for key in ("prompt", "relation_id", "subject"):
        if not _nonempty_str(rw.get(key)):
            raise FactsError(f"{where}: missing or empty field 'requested_rewrite.{key}'")
    if rw["prompt"].count("{}") != 1:
        raise FactsError(
            f"{where}: field 'requested_rewrite.prompt' must contain exactly one '{{}}' subject slot, "
            f"got {rw['prompt']!r}"
        )
    targets = {}
    for key in ("target_true", "target_new"):
        t = rw.get(key)
        if not isinstance(t, dict) or not _nonempty_str(t.get("str")):
            raise FactsError(f"{where}: missing or empty field 'requested_rewrite.{key}.str'")
        targets[key] = {"str": t["str"].strip(), "id": None if t.get("id") is None else str(t["id"])}
    if targets["target_true"]["str"] == targets["target_new"]["str"]:
        raise FactsError(f"{where}: target_true and target_new are the same ({targets['target_new']['str']!r})")
    record = {
        "case_id": raw["case_id"],
        "pararel_idx": raw.get("pararel_idx") if isinstance(raw.get("pararel_idx"), int) else None,
        "requested_rewrite": {
            "prompt": rw["prompt"],
            "relation_id": rw["relation_id"],
            "subject": rw["subject"],
            **targets,
        },
    }
    for key in PROMPT_LISTS:
        value = raw.get(key, [] if key not in REQUIRED_LISTS else None)
        if value is None:
            raise FactsError(f"{where}: missing field '{key}'")
        if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
            raise FactsError(f"{where}: field '{key}' must be a list of strings")
        record[key] = list(value)
    record["source"] = raw.get("source") if isinstance(raw.get("source"), str) else None
    return record


def normalise_records(records: list, source_name: str) -> list[dict]:
    if not isinstance(records, list):
        raise FactsError(f"{source_name}: expected a JSON list of records, got {type(records).__name__}")
    if not records:
        raise FactsError(f"{source_name}: no records")
    out, seen = [], set()
    for i, raw in enumerate(records):
        rec = normalise_record(raw, f"{source_name}: record {i}")
        if rec["case_id"] in seen:
            raise FactsError(f"{source_name}: record {i}: duplicate case_id {rec['case_id']}")
        seen.add(rec["case_id"])
        out.append(rec)
    return out


def load_facts_file(path: str | os.PathLike) -> list[dict]:
    """Read and validate a JSON list or a Parquet file in the CounterFact schema."""
    path = Path(path)
    if not path.is_file():
        raise FactsError(f"{path}: no such facts file")
    if path.suffix == ".parquet":
        try:
            records = pq.read_table(path).to_pylist()
        except Exception as exc:  # pyarrow raises several types for corrupt files
            raise FactsError(f"{path}: not a readable Parquet file ({exc})") from None
    else:
        try:
            with open(path, encoding="utf-8") as fh:
                records = json.load(fh)
        except json.JSONDecodeError as exc:
            raise FactsError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
        except UnicodeDecodeError as exc:
            raise FactsError(f"{path}: not UTF-8 text ({exc.reason})") from None
    return normalise_records(records, str(path))


def to_table(records: list[dict], source: str | None = None) -> pa.Table:
    rows = [dict(r, source=r.get("source") or source) for r in records]
    return pa.Table.from_pylist(rows, schema=FACT_SCHEMA)


def write_facts(records: list[dict], dest: str | os.PathLike, source: str | None = None) -> None:
    write_parquet(to_table(records, source), dest)


def read_facts(path: str | os.PathLike) -> list[dict]:
    return pq.read_table(path).to_pylist()


def fill(prompt: str, subject: str) -> str:
    """Put the subject into a CounterFact prompt (only the ``{}`` slot; other braces stay)."""
    return prompt.replace("{}", subject, 1)


def flat_facts(records: list[dict]) -> pd.DataFrame:
    """One row per fact with the texts the metric needs."""
    rows = []
    for r in records:
        rw = r["requested_rewrite"]
        rows.append(
            {
                "case_id": r["case_id"],
                "relation_id": rw["relation_id"],
                "subject": rw["subject"],
                "prompt": fill(rw["prompt"], rw["subject"]),
                "target_true": rw["target_true"]["str"],
                "target_new": rw["target_new"]["str"],
                "paraphrase_prompt": r["paraphrase_prompts"][0] if r["paraphrase_prompts"] else None,
                "generation_prompt": r["generation_prompts"][0] if r["generation_prompts"] else None,
                "source": r.get("source"),
            }
        )
    return pd.DataFrame(rows)
