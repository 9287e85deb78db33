"""Rule run_table: the configured runs as a tab-separated table for people to read."""

import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from workflow_scripts.io import atomic_path  # noqa: E402
from workflow_scripts.steps._runner import run_step  # noqa: E402


def write_run_table(rows: list[dict], dest: str) -> None:
    columns = ["scenario", "paper", "method", "variant", "fold", "seed", "curves", "lr", "params", "output"]
    with atomic_path(dest) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, columns, delimiter="\t", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def main(input, output, params, threads):
    write_run_table(list(params.rows), output.table)


if __name__ == "__main__":
    run_step(main, globals().get("snakemake"))
