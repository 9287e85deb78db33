"""Rule remix_report: forgetting of the stage-1 facts per REMIX cell, paired tests, the logit lens."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from workflow_scripts.steps._runner import run_step  # noqa: E402


def main(input, output, params, threads):
    from workflow_scripts.remix.report import write_remix_report

    write_remix_report([str(p) for p in input.outcomes], [str(p) for p in input.stages], list(params.cells),
                       dict(params.spec), str(params.model), {k: str(v) for k, v in output.items()})


if __name__ == "__main__":
    run_step(main, globals().get("snakemake"))
