"""Rule merging_statistics: the clients' per-fact keys and residuals on a scenario's start model,
measured once and read by every merge run (and the first round of every multi-round trajectory)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from workflow_scripts.steps._runner import run_step  # noqa: E402


def main(input, output, params, threads):
    from workflow_scripts.methods.merging import statistics_job

    job = dict(params.job)
    statistics_job(str(input.model), str(input.facts), str(input.slices), str(params.scenario), dict(job["params"]),
                   str(input.covariance) if hasattr(input, "covariance") else None, str(output.statistics))


if __name__ == "__main__":
    run_step(main, globals().get("snakemake"))
