"""Rule fold_slices: slices A, B, C, D, V and K of one fold (shared by every scenario); facts whose
counterfact target is also true (multi-valued relations) are left out."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

import pandas as pd  # noqa: E402

from workflow_scripts.facts.schema import read_facts  # noqa: E402
from workflow_scripts.io import write_parquet  # noqa: E402
from workflow_scripts.steps._runner import run_step  # noqa: E402
from workflow_scripts.scenarios.slices import fold_slices, known_case_ids, true_counterfacts  # noqa: E402


def main(input, output, params, threads):
    records = read_facts(input.facts)
    ids = [r["case_id"] for r in records]
    relations = ({r["case_id"]: r["requested_rewrite"]["relation_id"] for r in records}
                 if getattr(params, "match_relations", False) else None)
    history = pd.read_parquet(input.history_slices)
    flagged = true_counterfacts(records)
    if flagged:
        print(f"{len(flagged)} facts whose counterfact target is also true are left out of the update slices")
    excluded = set(history.case_id[history.slice == "H"]) | flagged
    known = known_case_ids(pd.read_parquet(input.known_by_base))
    write_parquet(fold_slices(ids, excluded, known, dict(params.sizes), params.seed, relations), output.slices)


if __name__ == "__main__":
    run_step(main, globals().get("snakemake"))
