# Collaborative editing (workflow_scripts/merging/): clients' frozen-MEMIT edits merged by the `merge`
# method's rules in the collaborative_edit scenario (through the `update` rule), and multi-round editing
# with a running covariance state. The clients' per-fact statistics are measured once per scenario, fold
# and setting and shared by every merge run and the first round of every trajectory.


rule merging_statistics:
    """Per fact of the scenario's learned slice: keys at every edited layer and the residual z* - h_L on
    the start model (frozen MEMIT), with λ per layer and the context templates (safetensors)."""
    input:
        unpack(statistics_job_inputs),
    output:
        statistics=res("merging/statistics/{scenario}/fold{fold}/{label}.safetensors"),
    params:
        scenario=lambda wc: wc.scenario,
        job=lambda wc: {"params": statistics_job(wc)["params"]},
    threads: 2
    resources:
        mem_mb=4000,
        gpu=1,
    log:
        res("logs/merging_statistics/{scenario}/fold{fold}/{label}.log"),
    benchmark:
        res("benchmarks/merging_statistics/{scenario}/fold{fold}/{label}.tsv")
    conda:
        "../envs/ml.yaml"
    script:
        "../workflow_scripts/steps/merging_statistics.py"


rule merging_rounds:
    """One multi-round trajectory: the collaborative scenario's facts dealt into rounds of clients, each
    round measured on the current model and merged against the running covariance state (weight α)."""
    input:
        unpack(rounds_job_inputs),
    output:
        outcomes=res("merging/rounds/{name}.parquet"),
        rounds=res("merging/rounds/{name}_rounds.parquet"),
    wildcard_constraints:
        name="|".join(ROUNDS) or "none",
    params:
        job=lambda wc: {k: v for k, v in ROUNDS[wc.name].items() if k in ("rule", "alpha", "params")},
        spec=config["merging"]["rounds"],
    threads: 2
    resources:
        mem_mb=4000,
        gpu=1,
    log:
        res("logs/merging_rounds/{name}.log"),
    benchmark:
        res("benchmarks/merging_rounds/{name}.tsv")
    conda:
        "../envs/ml.yaml"
    script:
        "../workflow_scripts/steps/merging_rounds.py"


rule merging_challenges:
    """Knowledge overlap (one client's edits submitted again by another; residual norms as the detector)
    and knowledge conflict (two objects for one prompt; augmenting one side with its paraphrase)."""
    input:
        unpack(lambda wc: {name: res(path) for name, path in CHALLENGES["inputs"].items()}),
    output:
        outcomes=res("merging/challenges.parquet"),
    params:
        job=lambda wc: {"params": CHALLENGES["params"]},
        spec=config["merging"]["challenges"],
    threads: 2
    resources:
        mem_mb=4000,
        gpu=1,
    log:
        res("logs/merging_challenges.log"),
    benchmark:
        res("benchmarks/merging_challenges.tsv")
    conda:
        "../envs/ml.yaml"
    script:
        "../workflow_scripts/steps/merging_challenges.py"


rule merging_report:
    """The merge rules side by side (per client, against the number of clients) and the forgetting
    curves of multi-round editing with the fixed and the running covariance."""
    input:
        rows=merge_run_files("row"),
        outcomes=merge_run_files("outcomes"),
        round_outcomes=expand(res("merging/rounds/{name}.parquet"), name=list(ROUNDS)),
        rounds=expand(res("merging/rounds/{name}_rounds.parquet"), name=list(ROUNDS)),
        challenges=[res("merging/challenges.parquet")] if CHALLENGES else [],
    output:
        summary=res("report/merging.md"),
        table=report(
            res("report/merging.csv"),
            caption="../report/merging_table.rst",
            category="Collaborative editing",
            labels={"table": "merge rules"},
        ),
        clients_figure=report(
            res("figures/merging_clients.png"),
            caption="../report/merging_clients.rst",
            category="Collaborative editing",
            labels={"figure": "edit quality vs clients"},
        ),
        rounds_figure=report(
            res("figures/merging_rounds.png"),
            caption="../report/merging_rounds.rst",
            category="Collaborative editing",
            labels={"figure": "multi-round forgetting"},
        ),
    params:
        model=describe_model(config["model"]["source"], config["model"]["dtype"]),
    log:
        res("logs/merging_report.log"),
    conda:
        "../envs/ml.yaml"
    script:
        "../workflow_scripts/steps/merging_report.py"
