"""Rule awareness_report: merged metrics table, readable summary and figures."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from workflow_scripts.reports.awareness import write_awareness_report  # noqa: E402
from workflow_scripts.steps._runner import run_step  # noqa: E402

INPUTS = ("metrics", "confusion", "importance", "samples", "features", "catalog")
OUTPUTS = ("metrics", "summary", "csv", "confusion", "feature_sets", "importance", "distributions")


def main(input, output, params, threads):
    inputs = {k: list(getattr(input, k)) if not isinstance(getattr(input, k), str) else [getattr(input, k)] for k in INPUTS}
    write_awareness_report(list(params.settings), inputs, {k: getattr(output, k) for k in OUTPUTS})


if __name__ == "__main__":
    run_step(main, globals().get("snakemake"))
