"""Rule report_probe: summary table (CSV + Markdown) and figure of the familiarity probe."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from workflow_scripts.steps._runner import run_step  # noqa: E402
from workflow_scripts.reports.probe import write_probe_report  # noqa: E402


def main(input, output, params, threads):
    write_probe_report(list(input.tables), output.csv, output.md, output.figure)


if __name__ == "__main__":
    run_step(main, globals().get("snakemake"))
