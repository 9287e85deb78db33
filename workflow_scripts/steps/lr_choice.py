"""Rules lr_choice (one method family's learning rate from its lr_tuning runs, by the declared rule)
and lr_tuning_table (every family's table in one)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

import pandas as pd  # noqa: E402

from workflow_scripts.io import atomic_path  # noqa: E402
from workflow_scripts.methods.tuning import rate_table, write_rates  # noqa: E402
from workflow_scripts.steps._runner import run_step  # noqa: E402


def main(input, output, params, threads):
    if hasattr(input, "tables"):  # rule lr_tuning_table: the families' tables in one
        table = pd.concat([pd.read_csv(p, sep="\t") for p in input.tables], ignore_index=True)
    else:  # rule lr_choice: one family
        table = rate_table(pd.concat([pd.read_parquet(p) for p in input.rows], ignore_index=True))
        write_rates(table, output.rates)
    with atomic_path(output.table) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.4g")


if __name__ == "__main__":
    run_step(main, globals().get("snakemake"))
