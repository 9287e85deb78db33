"""Rule updates_report: merged table, summary and figures of one targeted-update experiment."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from workflow_scripts.steps._runner import run_step  # noqa: E402
from workflow_scripts.updates.report import write_update_report  # noqa: E402


def main(input, output, params, threads):
    outputs = {k: getattr(output, k) for k in ("metrics", "curves", "csv", "summary", "vs_k", "pareto")}
    write_update_report(list(input.rows), list(input.curves), params.experiment, outputs)


if __name__ == "__main__":
    run_step(main, globals().get("snakemake"))
