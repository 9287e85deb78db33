"""Rule merging_report: the collaborative-editing tables and figures (merge rules x clients, rounds)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from workflow_scripts.steps._runner import run_step  # noqa: E402


def main(input, output, params, threads):
    from workflow_scripts.reports.merging import write_merging_report

    def paths(value):  # a list from Snakemake; comma-separated on the command line
        return value.split(",") if isinstance(value, str) else [str(p) for p in value]

    write_merging_report(paths(input.rows), paths(input.outcomes), paths(input.round_outcomes), paths(input.rounds),
                         str(params.model), {name: str(getattr(output, name))
                                             for name in ("summary", "table", "clients_figure", "rounds_figure")},
                         paths(input.challenges) if hasattr(input, "challenges") else [])


if __name__ == "__main__":
    run_step(main, globals().get("snakemake"))
