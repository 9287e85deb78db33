"""Rule entropy_texts: the fixed text set knowledge entropy is measured on."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from workflow_scripts.steps._runner import run_step  # noqa: E402


def main(input, output, params, threads):
    import pandas as pd

    from workflow_scripts.entropy.experiment import entropy_texts
    from workflow_scripts.io import write_parquet

    spec = dict(params.spec)
    texts = entropy_texts(spec["source"], int(spec["texts"]), int(spec["seed"]))
    write_parquet(pd.DataFrame({"text": texts}), str(output.texts))


if __name__ == "__main__":
    run_step(main, globals().get("snakemake"))
