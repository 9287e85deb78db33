"""Rule entropy_checkpoint: one checkpoint's knowledge entropy on the fixed text set."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from workflow_scripts.steps._runner import run_step  # noqa: E402


def main(input, output, params, threads):
    import pandas as pd

    from workflow_scripts.entropy.experiment import checkpoint_entropy

    spec = dict(params.spec)
    checkpoint_entropy(str(input.model), str(params.name), pd.read_parquet(str(input.texts)).text.tolist(), int(spec["max_tokens"]),
                       int(spec["bootstrap"]), int(spec["seed"]), str(output.table), str(output.coefficients))


if __name__ == "__main__":
    run_step(main, globals().get("snakemake"))
