"""Rule merging_challenges: knowledge overlap (an edit submitted by two clients) and knowledge conflict
(two clients, one prompt, two objects; with and without augmenting one side) on the start model."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from workflow_scripts.steps._runner import run_step  # noqa: E402


def main(input, output, params, threads):
    from workflow_scripts.io import write_parquet
    from workflow_scripts.merging.challenges import run_challenges

    inputs = {name: str(getattr(input, name)) for name in ("model", "facts", "slices", "known", "covariance", "statistics")}
    write_parquet(run_challenges(inputs, dict(params.job["params"]), dict(params.spec)), str(output.outcomes))


if __name__ == "__main__":
    run_step(main, globals().get("snakemake"))
