"""Rule generate_novel_facts: invented facts in the style of the familiar ones."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from workflow_scripts.steps._runner import run_step  # noqa: E402
from workflow_scripts.facts.prepare import generate_novel  # noqa: E402


def main(input, output, params, threads):
    generate_novel(
        input.facts, output.novel, output.stats, params.generator, params.n, params.seed, dict(params.llm)
    )


if __name__ == "__main__":
    run_step(main, globals().get("snakemake"))
