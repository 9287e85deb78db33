"""Rules entropy_injection and entropy_injection_report (``params.part``: ``run`` or ``report``).

``run``: one start checkpoint's fictional-knowledge injection run (probes, summary, run record).
``report``: every configured checkpoint's run in one Markdown report, a CSV table and a figure.

Outside Snakemake, e.g.::

    python workflow_scripts/steps/entropy_injection.py --param part='"run"' --param name='"base"' \
        --input model=results/model --input paraphrase=DIR/fictional_knowledge_paraphrased_paraphrase70.json \
        --input once=DIR/fictional_knowledge_paraphrased_once60.json --param spec='{"steps": 40}' \
        --param texts=16 --param source='"gensim_wiki"' --param text_seed=0 \
        --output probes=/tmp/inj/probes.parquet --output summary=/tmp/inj/summary.parquet --output run=/tmp/inj/run.json
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from workflow_scripts.steps._runner import run_step  # noqa: E402


def _paths(value):  # a list from Snakemake; comma-separated on the command line
    return value.split(",") if isinstance(value, str) else [str(p) for p in value]


def main(input, output, params, threads):
    from workflow_scripts.entropy.injection import checkpoint_injection, write_injection_report

    part = str(getattr(params, "part", "run"))
    if part == "report":
        write_injection_report(_paths(input.summaries), _paths(input.probes), _paths(input.runs), str(params.model),
                               {k: str(getattr(output, k)) for k in ("summary", "table", "figure")})
        return
    if part != "run":
        raise ValueError(f"params.part must be 'run' or 'report', got {part!r}")
    checkpoint_injection(str(input.model), str(params.name),
                         {"paraphrase": str(input.paraphrase), "once": str(input.once)}, dict(params.spec),
                         str(params.source), int(params.texts), int(params.text_seed),
                         {k: str(getattr(output, k)) for k in ("probes", "summary", "run")})


if __name__ == "__main__":
    run_step(main, globals().get("snakemake"))
