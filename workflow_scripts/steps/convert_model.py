"""Rule convert_model: the configured model, once, as a safetensors directory, and its table of
tracked modules (name, block, type, width) for jobs that need no weights."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from workflow_scripts.steps._runner import run_step  # noqa: E402
from workflow_scripts.models.loading import convert_model  # noqa: E402


def main(input, output, params, threads):
    convert_model(params.source, output.model_dir, params.dtype, modules_path=output.modules)


if __name__ == "__main__":
    run_step(main, globals().get("snakemake"))
