# REMIX (workflow_scripts/remix/): continual memorisation of factoids. One job per stage-1 set and stage-1
# mixing (stage 1 once, then every stage-2 cell from a copy of its weights), then one report. Helpers (REMIX,
# remix_inputs, remix_training, remix_files) are in rules/common.smk.

rule remix_stage:
    """Stage 1 of one set with or without random-word mixing, then each stage-2 cell from it, scored on the stage-1 facts."""
    input:
        unpack(remix_inputs),
    output:
        outcomes=res("remix/{set}/s1_{stage1}/outcomes.parquet"),
        stages=res("remix/{set}/s1_{stage1}/stages.parquet"),
    wildcard_constraints:
        set="facts|kvr",
        stage1="none|random",
    params:
        set=lambda wc: wc.set,
        stage1=lambda wc: wc.stage1,
        spec=REMIX,
        training1=lambda wc: remix_training(wc, 1),
        training2=lambda wc: remix_training(wc, 2),
    threads: 2
    resources:
        mem_mb=6000,
        gpu=1,
    log:
        res("logs/remix_stage/{set}_s1_{stage1}.log"),
    benchmark:
        res("benchmarks/remix_stage/{set}_s1_{stage1}.tsv")
    conda:
        "../envs/ml.yaml"
    script:
        "../workflow_scripts/steps/remix_stage.py"


rule remix_report:
    """Forgetting of the stage-1 facts per cell (exact and generation exact match, intervals, paired tests between cells
    one factor apart) and the logit lens."""
    input:
        outcomes=remix_files("outcomes"),
        stages=remix_files("stages"),
    output:
        summary=res("report/remix.md"),
        metrics=res("remix/metrics.parquet"),
        comparisons=res("remix/comparisons.parquet"),
        table=report(
            res("report/remix.csv"),
            caption="../report/remix_table.rst",
            category="REMIX",
            labels={"table": "forgetting by cell"},
        ),
        retention=report(
            res("figures/remix_retention.png"),
            caption="../report/remix_retention.rst",
            category="REMIX",
            labels={"figure": "stage-1 facts kept"},
        ),
        lens=report(
            res("figures/remix_lens.png"),
            caption="../report/remix_lens.rst",
            category="REMIX",
            labels={"figure": "logit lens"},
        ),
    params:
        spec=REMIX,
        cells=[c.name for c in REMIX_CELLS],
        model=describe_model(config["model"]["source"], config["model"]["dtype"]),
    log:
        res("logs/remix_report.log"),
    benchmark:
        res("benchmarks/remix_report.tsv")
    conda:
        "../envs/ml.yaml"
    script:
        "../workflow_scripts/steps/remix_report.py"
