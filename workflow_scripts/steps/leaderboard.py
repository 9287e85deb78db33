"""Rule leaderboard: every run row in one table with intervals and paired tests, and the Pareto figure."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from workflow_scripts.reports.leaderboard import write_leaderboard  # noqa: E402
from workflow_scripts.steps._runner import run_step  # noqa: E402


def main(input, output, params, threads):
    write_leaderboard(list(input.rows), list(input.outcomes), dict(params.reference),
                      {k: getattr(output, k) for k in ("table", "csv", "html", "summary", "pareto")},
                      getattr(params, "model", ""),
                      (str(input.remix_metrics), str(input.remix_tests)) if hasattr(input, "remix_metrics") else None)


if __name__ == "__main__":
    run_step(main, globals().get("snakemake"))
