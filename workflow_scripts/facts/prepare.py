"""Prepare the familiar facts and the novel facts as Parquet tables (the rules' entry points)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import urllib.request
from pathlib import Path

from workflow_scripts.facts.fictionalise import fictionalise
from workflow_scripts.facts.llm import LLMSettings, generate_llm_novel
from workflow_scripts.facts.schema import FactsError, load_facts_file, read_facts, write_facts
from workflow_scripts.facts.starter import starter_records
from workflow_scripts.io import atomic_path, write_json

log = logging.getLogger(__name__)


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, dest: str | os.PathLike, sha256: str | None, timeout_s: float = 60) -> str:
    """Download (or copy, for file:// URLs) to ``dest``, checking the sha256 when one is given.

    Returns the file's sha256, which is also written to ``dest + '.sha256'``.
    """
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp, open(tmp, "wb") as out:
            while chunk := resp.read(1 << 20):
                out.write(chunk)
        digest = sha256_of(tmp)
        if sha256 and digest != sha256:
            raise FactsError(f"{url}: sha256 mismatch: expected {sha256}, got {digest}")
    (dest.parent / f"{dest.name}.sha256").write_text(f"{digest}  {dest.name}\n")
    if not sha256:
        log.warning("no facts.sha256 configured; downloaded %s has sha256 %s", url, digest)
    return digest


def prepare_facts(source: str, out_path: str, path: str | None = None, limit: int | None = None) -> int:
    """Write the familiar facts table; ``path`` is the local file for source 'file'/'counterfact'."""
    if source == "starter":
        records = starter_records()
    else:
        if not path:
            raise FactsError(f"facts source {source!r} needs a file")
        records = load_facts_file(path)
        for r in records:
            r["source"] = source
    if limit:
        records = records[:limit]
    write_facts(records, out_path)
    log.info("wrote %d facts to %s", len(records), out_path)
    return len(records)


def generate_novel(
    facts_path: str, out_path: str, stats_path: str, generator: str, n: int, seed: int, llm: dict | None = None
) -> int:
    """Write ``n`` novel facts made from the familiar facts, and the generator's statistics."""
    records = read_facts(facts_path)
    if generator == "fictionaliser":
        novel = fictionalise(records, n, seed)
        stats = {"generator": generator, "accepted": len(novel)}
    elif generator == "llm":
        settings = LLMSettings(**(llm or {}))
        novel, st = generate_llm_novel(records, n, seed, settings)
        stats = {"generator": generator, "model": settings.model, **st.__dict__}
        if not novel:
            raise RuntimeError(f"the LLM produced no valid novel facts: {json.dumps(stats)}")
    else:
        raise ValueError(f"unknown novel-fact generator {generator!r}")
    write_facts(novel, out_path)
    write_json(stats, stats_path)
    log.info("wrote %d novel facts (%s) to %s: %s", len(novel), generator, out_path, json.dumps(stats))
    return len(novel)
