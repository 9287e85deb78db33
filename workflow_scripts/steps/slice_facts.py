"""Rule awareness_slices: disjoint seeded slices of the facts (H for history, F for fine-tuning)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from workflow_scripts.steps._runner import run_step  # noqa: E402
from workflow_scripts.facts.schema import read_facts  # noqa: E402
from workflow_scripts.io import write_parquet  # noqa: E402
from workflow_scripts.scenarios.slices import slice_facts  # noqa: E402


def main(input, output, params, threads):
    ids = [r["case_id"] for r in read_facts(input.facts)]
    write_parquet(slice_facts(ids, dict(params.sizes), params.seed), output.slices)


if __name__ == "__main__":
    run_step(main, globals().get("snakemake"))
