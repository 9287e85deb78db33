"""Rule updates_arm: one arm (strategy, k) of a targeted-update experiment."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from workflow_scripts.steps._runner import run_step  # noqa: E402
from workflow_scripts.updates.experiment import run_update_arm  # noqa: E402


def main(input, output, params, threads):
    usage = {"old": input.usage_old, "new": input.usage_new, "history": input.usage_history}
    run_update_arm(str(input.model), input.facts, input.slices, input.known, usage, params.usage_score,
                   params.strategy, params.k, params.fold, dict(params.training), dict(params.lora),
                   output.row, output.curve, params.experiment, params.fold)


if __name__ == "__main__":
    run_step(main, globals().get("snakemake"))
