"""Familiarity-probe speed on the default model: facts per second, batched vs one at a time.

Uses results/model if the pipeline has run, else converts the embedded model to a temporary folder
(and reports how long that took). Prints its figures, then one line of name=value pairs.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workflow_scripts.facts.fictionalise import fictionalise  # noqa: E402
from workflow_scripts.facts.starter import starter_records  # noqa: E402
from workflow_scripts.models.loading import convert_model, load_model  # noqa: E402
from workflow_scripts.probe import probe_records  # noqa: E402

N_FACTS = 400


def main() -> None:
    torch.set_num_threads(2)
    model_dir = Path("results/model")
    convert_s = float("nan")
    if not (model_dir / "config.json").is_file():
        model_dir = Path(tempfile.mkdtemp()) / "model"
        start = time.perf_counter()
        convert_model("embedded:smollm2", model_dir)
        convert_s = time.perf_counter() - start
        print(f"converted the embedded model in {convert_s:.1f} s")
    model, tok = load_model(model_dir)
    records = fictionalise(starter_records(), N_FACTS, seed=0)
    probe_records(model, tok, records[:16], "warmup", 16)
    start = time.perf_counter()
    table = probe_records(model, tok, records, "novel", 32)
    batched_s = time.perf_counter() - start
    start = time.perf_counter()
    probe_records(model, tok, records[:40], "novel", 1)
    single_s = (time.perf_counter() - start) * N_FACTS / 40
    print(f"probe of {N_FACTS} facts x 2 targets, batch 32: {batched_s:.1f} s ({N_FACTS / batched_s:.1f} facts/s)")
    print(f"one at a time (extrapolated from 40 facts): {single_s:.1f} s")
    print(f"rows scored: {len(table)}")
    print(f"convert_s={convert_s:.1f} probe_400_s={batched_s:.1f} probe_single_400_s={single_s:.1f} "
          f"speedup={single_s / batched_s:.2f} facts_per_s={N_FACTS / batched_s:.1f}")


if __name__ == "__main__":
    main()
