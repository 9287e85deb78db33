"""Rule editing_sequential_report: the sequential-editing figure and table."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from workflow_scripts.steps._runner import run_step  # noqa: E402


def main(input, output, params, threads):
    from workflow_scripts.reports.editing import write_sequential_report

    write_sequential_report([str(p) for p in input.tables], str(params.model), str(output.figure), str(output.summary))


if __name__ == "__main__":
    run_step(main, globals().get("snakemake"))
