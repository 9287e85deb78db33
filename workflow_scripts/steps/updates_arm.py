"""Rule updates_arm: one arm (experiment, fold, setting, strategy, k) of the targeted updates."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from workflow_scripts.steps._runner import run_step  # noqa: E402
from workflow_scripts.updates.experiment import run_update_arm  # noqa: E402


def main(input, output, params, threads):
    usage = {source: getattr(input, f"usage_{source}") for source in ("A", "B", "H") if hasattr(input, f"usage_{source}")}
    run_update_arm(str(input.model), input.facts, input.slices, input.known, usage, params.usage_score,
                   params.experiment, params.setting, params.strategy, params.k, params.fold,
                   dict(params.training), dict(params.lora), bool(params.curves), output.row, output.curve)


if __name__ == "__main__":
    run_step(main, globals().get("snakemake"))
