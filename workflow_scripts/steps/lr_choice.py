"""Rule lr_choice: each method family's learning rate from the lr_tuning runs (one declared rule)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

import pandas as pd  # noqa: E402

from workflow_scripts.io import atomic_path  # noqa: E402
from workflow_scripts.methods.tuning import rate_table, write_rates  # noqa: E402
from workflow_scripts.steps._runner import run_step  # noqa: E402


def main(input, output, params, threads):
    rows = pd.concat([pd.read_parquet(p) for p in input.rows], ignore_index=True)
    table = rate_table(rows)
    with atomic_path(output.table) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.4g")
    write_rates(table, output.rates)


if __name__ == "__main__":
    run_step(main, globals().get("snakemake"))
