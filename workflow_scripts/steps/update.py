"""Rule update: one run of the run table (scenario, method, variant, fold) through the harness."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from workflow_scripts.methods.run import run_update  # noqa: E402
from workflow_scripts.steps._runner import run_step  # noqa: E402


def main(input, output, params, threads):
    inputs = {name: str(getattr(input, name)) for name in input.keys()}
    run_update(dict(params.run), inputs, dict(params.training), output.row, output.curve, output.outcomes,
               entropy=dict(getattr(params, "entropy", None) or {}))


if __name__ == "__main__":
    run_step(main, globals().get("snakemake"))
