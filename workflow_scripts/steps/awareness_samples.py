"""Rule awareness_samples: balanced novel / familiar / dissonant probe texts of one setting."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from workflow_scripts.steps._runner import run_step  # noqa: E402
from workflow_scripts.awareness.samples import make_samples  # noqa: E402


def main(input, output, params, threads):
    make_samples(params.setting, input.facts, input.novel, input.slices, input.known, output.samples,
                 params.n_per_class, params.seed)


if __name__ == "__main__":
    run_step(main, globals().get("snakemake"))
