"""Rule updates_overview: figures and summary across the targeted-update experiments."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from workflow_scripts.steps._runner import run_step  # noqa: E402
from workflow_scripts.reports.overview import write_overview  # noqa: E402


def main(input, output, params, threads):
    usage = {
        "A": [p for p in input.usage if p.endswith("usage_A.safetensors")],
        "B": [p for p in input.usage if p.endswith("usage_B.safetensors")],
        "H": [input.usage_history],
    }
    outputs = {k: getattr(output, k) for k in ("summary", "dissonance", "location", "usage", "sweeps")}
    write_overview(list(input.metrics), list(input.curves), usage, str(input.modules), params.usage_score,
                   list(params.k), outputs, getattr(params, "model", ""))


if __name__ == "__main__":
    run_step(main, globals().get("snakemake"))
