"""Rule entropy_report: knowledge entropy by checkpoint, with paired differences; with entropy.arms also
every update run's entropy against its acquisition and retention, and resuscitation against full fine-tuning."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from workflow_scripts.steps._runner import run_step  # noqa: E402

ARM_OUTPUTS = ("runs", "correlations", "vs_updates", "resuscitation")


def main(input, output, params, threads):
    from workflow_scripts.entropy.experiment import write_entropy_report

    def paths(value):  # a list from Snakemake; comma-separated on the command line
        return value.split(",") if isinstance(value, str) else [str(p) for p in value]

    names = list(params.names) if not isinstance(params.names, str) else params.names.split(",")
    spec = dict(params.spec)
    rows = paths(getattr(input, "rows", None) or [])
    outcomes = paths(getattr(input, "outcomes", None) or [])
    keys = ("summary", "table", "figure", *(ARM_OUTPUTS if rows else ()))
    write_entropy_report(paths(input.tables), paths(input.coefficients), names, str(params.model),
                         int(spec["bootstrap"]), int(spec["seed"]), {k: str(getattr(output, k)) for k in keys},
                         rows=rows, outcomes=outcomes)


if __name__ == "__main__":
    run_step(main, globals().get("snakemake"))
