"""Rule remix_stage: stage 1 of one REMIX set with or without random-word mixing, then its stage-2 cells."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from workflow_scripts.steps._runner import run_step  # noqa: E402


def main(input, output, params, threads):
    from workflow_scripts.remix.experiment import run_job

    training1 = dict(params.training1) if params.training1 else None
    run_job(str(input.model), str(params.set), str(params.stage1), dict(params.spec), training1, dict(params.training2),
            str(output.outcomes), str(output.stages), facts_path=str(input.facts), slices_path=str(input.slices),
            reused={"none/facts/none": str(input.reuse_ab)} if hasattr(input, "reuse_ab") else None)


if __name__ == "__main__":
    run_step(main, globals().get("snakemake"))
