"""Rule editing_layers: causal tracing and the ROME layer sweep on the pre-trained model."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from workflow_scripts.steps._runner import run_step  # noqa: E402


def main(input, output, params, threads):
    import pandas as pd

    from workflow_scripts.editing.experiments import layer_experiment, trace_facts
    from workflow_scripts.facts.schema import flat_facts, read_facts
    from workflow_scripts.io import write_json, write_parquet
    from workflow_scripts.models.loading import load_model
    from workflow_scripts.reports.editing import write_layer_report
    from workflow_scripts.scenarios.slices import known_case_ids

    spec = dict(params.spec)
    flat = flat_facts(read_facts(str(input.facts)))
    facts = trace_facts(flat, known_case_ids(pd.read_parquet(str(input.known))), int(spec["facts"]), int(spec["seed"]))
    model, tok = load_model(str(input.model), dtype="float32")
    out = layer_experiment(model, tok, facts, spec["sites"], int(spec["samples"]), float(spec["noise"]),
                           int(spec["seed"]), [int(x) for x in spec["sweep"]], dict(params.rome))
    write_parquet(out["trace"], str(output.trace))
    write_parquet(out["sweep"].astype({"layer": "int64", "case_id": "int64", "new_beats_old": bool, "exact": bool,
                                       "paraphrase_beats_old": "boolean"}), str(output.sweep))
    write_json(out["choice"], str(output.choice))
    write_layer_report(out, str(params.model), str(output.figure), str(output.summary))


if __name__ == "__main__":
    run_step(main, globals().get("snakemake"))
