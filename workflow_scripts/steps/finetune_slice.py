"""Rules history_usage / finetune_awareness: full fine-tune on one slice of the facts."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from workflow_scripts.steps._runner import run_step  # noqa: E402
from workflow_scripts.training.stages import finetune_on_slice  # noqa: E402
from workflow_scripts.training.train import TrainConfig  # noqa: E402


def main(input, output, params, threads):
    training = dict(params.training)
    stop = training.pop("stop_at_accuracy", None)
    finetune_on_slice(
        str(input.model), input.facts, input.slices, params.slice, TrainConfig(**training),
        output.history, out_model_dir=getattr(output, "model_dir", None), usage_path=getattr(output, "usage", None),
        known_path=getattr(output, "known", None), score_slices=getattr(params, "score", None),
        stop_at_accuracy=stop,
    )


if __name__ == "__main__":
    run_step(main, globals().get("snakemake"))
