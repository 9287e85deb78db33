"""Rule scenario_report: tables and figures of one scenario's runs."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from workflow_scripts.reports.updates import write_scenario_report  # noqa: E402
from workflow_scripts.steps._runner import run_step  # noqa: E402

OUTPUTS = ("metrics", "curves", "csv", "summary", "vs_k", "pareto")


def main(input, output, params, threads):
    write_scenario_report(list(input.rows), list(input.curves), params.scenario,
                          {k: getattr(output, k) for k in OUTPUTS}, getattr(params, "model", ""))


if __name__ == "__main__":
    run_step(main, globals().get("snakemake"))
