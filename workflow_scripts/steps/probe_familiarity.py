"""Rule probe_familiarity: score the base model on every fact (target_true and target_new)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from workflow_scripts.steps._runner import run_step  # noqa: E402
from workflow_scripts.probe import probe_familiarity  # noqa: E402


def main(input, output, params, threads, resources):
    probe_familiarity(str(input.model), input.facts, output.table, params.factset, int(resources.batch_size))


if __name__ == "__main__":
    run_step(main, globals().get("snakemake"))
