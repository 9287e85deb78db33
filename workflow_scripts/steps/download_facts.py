"""Rule download_facts: fetch a facts file (CounterFact by default) and check its sha256."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from workflow_scripts.steps._runner import run_step  # noqa: E402
from workflow_scripts.facts.prepare import download  # noqa: E402


def main(input, output, params, threads):
    download(params.url, output.raw, params.sha256)


if __name__ == "__main__":
    run_step(main, globals().get("snakemake"))
