# Fictional-knowledge injection (opt-in: entropy.injection.enabled): continual language-model training of each
# start checkpoint on generic text with fictional knowledge items put in front of batch rows, and the items'
# probes scored along the way (workflow_scripts/entropy/injection.py). Helpers (INJECTION, injection_data, entropy_model) are in rules/common.smk.

rule entropy_injection:
    """One start checkpoint trained on generic text with knowledge injections; its probes scored along the way."""
    input:
        unpack(injection_data),
        model=entropy_model,
    output:
        probes=res("entropy/injection/{checkpoint}/probes.parquet"),
        summary=res("entropy/injection/{checkpoint}/summary.parquet"),
        run=res("entropy/injection/{checkpoint}/run.json"),
    wildcard_constraints:
        checkpoint=r"base|fold\d+_(A|AB)",
    params:
        part="run",
        name=lambda wc: wc.checkpoint,
        spec=INJECTION_RUN,
        texts=config["entropy"]["texts"],
        source=config["entropy"]["source"],
        text_seed=config["entropy"]["seed"],
    threads: 2
    resources:
        mem_mb=6000,
        gpu=1,
    log:
        res("logs/entropy_injection/{checkpoint}.log"),
    benchmark:
        res("benchmarks/entropy_injection/{checkpoint}.tsv")
    conda:
        "../envs/ml.yaml"
    script:
        "../workflow_scripts/steps/entropy_injection.py"


rule entropy_injection_report:
    """Every configured start checkpoint's injection run: acquisition by item kind and probe type."""
    input:
        summaries=expand(res("entropy/injection/{checkpoint}/summary.parquet"), checkpoint=INJECTION["checkpoints"]),
        probes=expand(res("entropy/injection/{checkpoint}/probes.parquet"), checkpoint=INJECTION["checkpoints"]),
        runs=expand(res("entropy/injection/{checkpoint}/run.json"), checkpoint=INJECTION["checkpoints"]),
    output:
        summary=res("report/entropy_injection.md"),
        table=report(
            res("report/entropy_injection.csv"),
            caption="../report/entropy_injection_table.rst",
            category="Knowledge entropy",
            labels={"table": "fictional-knowledge injection"},
        ),
        figure=report(
            res("figures/entropy_injection.png"),
            caption="../report/entropy_injection.rst",
            category="Knowledge entropy",
            labels={"figure": "injection probes by step"},
        ),
    params:
        part="report",
        model=describe_model(config["model"]["source"], config["model"]["dtype"]),
    log:
        res("logs/entropy_injection_report.log"),
    conda:
        "../envs/ml.yaml"
    script:
        "../workflow_scripts/steps/entropy_injection.py"
