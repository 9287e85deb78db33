"""Rule awareness_classify: headline resplits, ablations, per-sample predictions and the best saved classifier
of one setting."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from workflow_scripts.steps._runner import run_step  # noqa: E402
from workflow_scripts.awareness.experiment import classify  # noqa: E402


def main(input, output, params, threads):
    outputs = {k: getattr(output, k) for k in ("metrics", "confusion", "predictions", "importance", "model", "model_info")}
    classify(params.setting, input.samples, input.features, input.catalog, outputs,
             list(params.seeds), list(params.classifiers), params.ablation_classifier, params.test_fraction,
             params.block_ranges, int(params.resplits))


if __name__ == "__main__":
    run_step(main, globals().get("snakemake"))
