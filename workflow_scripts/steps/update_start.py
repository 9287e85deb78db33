"""Rule update_start: a scenario's start model scored once per fold (shared by every run of it)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from workflow_scripts.methods.run import score_start  # noqa: E402
from workflow_scripts.steps._runner import run_step  # noqa: E402


def main(input, output, params, threads):
    inputs = {name: str(getattr(input, name)) for name in input.keys()}
    score_start(str(params.scenario), inputs, str(output.start))


if __name__ == "__main__":
    run_step(main, globals().get("snakemake"))
