"""Rule editing_covariance: one start checkpoint's key statistics for the editor runs that start there."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from workflow_scripts.steps._runner import run_step  # noqa: E402


def main(input, output, params, threads):
    from workflow_scripts.editing.covariance import editor_covariance

    editor_covariance(str(input.model), list(params.runs), str(output.covariance))


if __name__ == "__main__":
    run_step(main, globals().get("snakemake"))
