rule probe_familiarity:
    """Score the base model on every fact of a set, for target_true and target_new."""
    input:
        model=res("model"),
        facts=res("facts/{factset}.parquet"),
    output:
        table=res("probe/{factset}.parquet"),
    wildcard_constraints:
        factset="facts|novel",
    params:
        factset=lambda wc: wc.factset,
    threads: 2
    resources:
        mem_mb=4000,
        gpu=1,
        batch_size=config["probe"]["batch_size"],  # a runtime knob: the metric is batch-invariant
    log:
        res("logs/probe_familiarity_{factset}.log"),
    benchmark:
        res("benchmarks/probe_familiarity_{factset}.tsv")
    conda:
        "../envs/ml.yaml"
    script:
        "../workflow_scripts/steps/probe_familiarity.py"


rule report_probe:
    """Summary table and figure of what the base model already knows."""
    input:
        tables=[res("probe/facts.parquet"), res("probe/novel.parquet")],
    output:
        csv=report(
            res("report/familiarity.csv"),
            caption="../report/familiarity_table.rst",
            category="Familiarity probe",
            labels={"table": "familiarity summary"},
        ),
        md=res("report/familiarity.md"),
        figure=report(
            res("figures/known_by_relation.png"),
            caption="../report/known_by_relation.rst",
            category="Familiarity probe",
            labels={"figure": "known by relation"},
        ),
    log:
        res("logs/report_probe.log"),
    benchmark:
        res("benchmarks/report_probe.tsv")
    conda:
        "../envs/ml.yaml"
    script:
        "../workflow_scripts/steps/report_probe.py"
