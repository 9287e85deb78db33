"""Rule prepare_facts: the familiar facts as a validated CounterFact-schema Parquet table."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from workflow_scripts.steps._runner import run_step  # noqa: E402
from workflow_scripts.facts.prepare import prepare_facts  # noqa: E402


def main(input, output, params, threads):
    path = getattr(input, "raw", None)
    prepare_facts(params.source, output.facts, path=str(path) if path else None, limit=params.limit)


if __name__ == "__main__":
    run_step(main, globals().get("snakemake"))
