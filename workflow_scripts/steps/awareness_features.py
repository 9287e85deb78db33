"""Rule awareness_features: internal and output-only features of every probe text."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from workflow_scripts.steps._runner import run_step  # noqa: E402
from workflow_scripts.awareness.experiment import extract_features  # noqa: E402


def main(input, output, params, threads, resources):
    extract_features(str(input.model), input.samples, input.usage, output.features, output.catalog,
                     int(resources.batch_size))


if __name__ == "__main__":
    run_step(main, globals().get("snakemake"))
