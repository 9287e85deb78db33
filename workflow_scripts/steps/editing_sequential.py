"""Rule editing_sequential: one editor over a stream of facts, batch after batch, from checkpoint A."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from workflow_scripts.steps._runner import run_step  # noqa: E402


def main(input, output, params, threads):
    import pandas as pd

    from workflow_scripts.editing.experiments import sequential_editing
    from workflow_scripts.facts.schema import flat_facts, read_facts
    from workflow_scripts.io import write_parquet
    from workflow_scripts.methods.base import method
    from workflow_scripts.models.loading import load_model
    from workflow_scripts.scenarios.slices import known_case_ids

    run, spec = dict(params.run), dict(params.spec)
    m = method(run["method"])
    flat = flat_facts(read_facts(str(input.facts)))
    slices = pd.read_parquet(str(input.slices))
    old = flat[flat.case_id.isin(slices.case_id[slices.slice == "A"])].reset_index(drop=True)
    stream = pd.concat([flat[flat.case_id.isin(slices.case_id[slices.slice == name])] for name in spec["stream"]],
                       ignore_index=True)
    model, tok = load_model(str(input.model), dtype="float32")
    covariance = None
    if hasattr(input, "covariance"):
        from workflow_scripts.editing.covariance import load_covariance

        params_ = m.make_params(run["params"])
        covariance = load_covariance(str(input.covariance), model, m.edit_layers(model, params_))[0]
    table = sequential_editing(model, tok, m.name, m.make_params(run["params"]), old,
                               known_case_ids(pd.read_parquet(str(input.known))), stream, "target_true",
                               int(spec["batch"]), covariance, seed=int(run["seed"]))
    write_parquet(table, str(output.table))


if __name__ == "__main__":
    run_step(main, globals().get("snakemake"))
