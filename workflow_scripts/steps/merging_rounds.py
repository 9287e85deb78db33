"""Rule merging_rounds: one multi-round collaborative-editing trajectory (a merge rule and a state weight α)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from workflow_scripts.steps._runner import run_step  # noqa: E402


def main(input, output, params, threads):
    from workflow_scripts.io import write_parquet
    from workflow_scripts.merging.experiments import rounds_experiment

    job = dict(params.job)
    inputs = {name: str(getattr(input, name)) for name in ("model", "facts", "slices", "known", "covariance", "statistics")}
    outcomes, records = rounds_experiment(inputs, dict(job["params"]), dict(params.spec), job["rule"], job["alpha"])
    write_parquet(outcomes, str(output.outcomes))
    write_parquet(records, str(output.rounds))


if __name__ == "__main__":
    run_step(main, globals().get("snakemake"))
