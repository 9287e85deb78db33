"""Rule awareness_report: merged metrics, paired tests, readable summary (intervals, n) and figures."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from workflow_scripts.reports.awareness import write_awareness_report  # noqa: E402
from workflow_scripts.steps._runner import run_step  # noqa: E402

INPUTS = ("metrics", "confusion", "predictions", "importance", "samples", "features", "catalog")
OUTPUTS = ("metrics", "paired", "summary", "csv", "confusion", "feature_sets", "importance", "distributions")


def main(input, output, params, threads):
    inputs = {k: list(getattr(input, k)) if not isinstance(getattr(input, k), str) else [getattr(input, k)] for k in INPUTS}
    write_awareness_report(list(params.settings), inputs, {k: getattr(output, k) for k in OUTPUTS},
                           model=params.model,
                           test_fraction=float(params.test_fraction))


if __name__ == "__main__":
    run_step(main, globals().get("snakemake"))
