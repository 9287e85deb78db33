# Knowledge editors (ROME, MEMIT; workflow_scripts/editing/): the key statistics C = E[k kᵀ] of each
# start checkpoint an editor run starts from, computed once and shared by every editor run on it.


rule editing_covariance:
    """C = E[k kᵀ] at the edited layers of one start checkpoint (the union over the editor runs that
    start there), from a text corpus available offline; float64, with the weights' fingerprints."""
    input:
        model=lambda wc: res(covariance_job(wc)["model"]),
    output:
        covariance=res("editing/covariance/{start}/{label}.safetensors"),
    params:
        runs=lambda wc: covariance_job(wc)["runs"],
    threads: 2
    resources:
        mem_mb=4000,
        gpu=1,
    log:
        res("logs/editing_covariance/{start}/{label}.log"),
    benchmark:
        res("benchmarks/editing_covariance/{start}/{label}.tsv")
    conda:
        "../envs/ml.yaml"
    script:
        "../workflow_scripts/steps/editing_covariance.py"


rule editing_layers:
    """Where facts live in the pre-trained model: causal traces (block and MLP outputs) of facts it
    knows, and ROME's efficacy by layer; the chosen layers in a small file the config can point to."""
    input:
        model=res("model"),
        facts=res("facts/facts.parquet"),
        known=res("probe/facts.parquet"),
    output:
        trace=res("editing/trace.parquet"),
        sweep=res("editing/layer_sweep.parquet"),
        choice=res("editing/layer_choice.json"),
        summary=res("report/editing_layers.md"),
        figure=report(
            res("figures/editing_causal_trace.png"),
            caption="../report/editing_causal_trace.rst",
            category="Knowledge editing",
            labels={"figure": "causal tracing"},
        ),
    params:
        spec=config["editing"]["layers"],
        rome=config["methods"]["rome"],
        model=describe_model(config["model"]["source"], config["model"]["dtype"]),
    threads: 2
    resources:
        mem_mb=4000,
        gpu=1,
    log:
        res("logs/editing_layers.log"),
    benchmark:
        res("benchmarks/editing_layers.tsv")
    conda:
        "../envs/ml.yaml"
    script:
        "../workflow_scripts/steps/editing_layers.py"


rule editing_sequential:
    """One editor applied to the stream's facts in batches, one batch after another, from checkpoint A."""
    input:
        unpack(sequential_job_inputs),
    output:
        table=res("editing/sequential/{method}.parquet"),
    wildcard_constraints:
        method="|".join(SEQUENTIAL) or "none",
    params:
        run=lambda wc: SEQUENTIAL[wc.method].job_params(),
        spec=config["editing"]["sequential"],
    threads: 2
    resources:
        mem_mb=4000,
        gpu=1,
    log:
        res("logs/editing_sequential/{method}.log"),
    benchmark:
        res("benchmarks/editing_sequential/{method}.tsv")
    conda:
        "../envs/ml.yaml"
    script:
        "../workflow_scripts/steps/editing_sequential.py"


rule editing_sequential_report:
    """Retention of old facts and accuracy on earlier edits as the stream of edits grows, per editor."""
    input:
        tables=expand(res("editing/sequential/{method}.parquet"), method=list(SEQUENTIAL)),
    output:
        summary=res("report/editing_sequential.md"),
        figure=report(
            res("figures/editing_sequential.png"),
            caption="../report/editing_sequential.rst",
            category="Knowledge editing",
            labels={"figure": "sequential editing"},
        ),
    params:
        model=describe_model(config["model"]["source"], config["model"]["dtype"]),
    log:
        res("logs/editing_sequential_report.log"),
    conda:
        "../envs/ml.yaml"
    script:
        "../workflow_scripts/steps/editing_sequential_report.py"
