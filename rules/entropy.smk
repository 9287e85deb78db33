# Knowledge entropy (workflow_scripts/entropy/): how evenly each checkpoint uses its feed-forward neurons, on
# one fixed text set, with bootstrap intervals (opt-in: entropy.checkpoints).


rule entropy_texts:
    """The fixed text set every checkpoint is measured on."""
    output:
        texts=res("entropy/texts.parquet"),
    params:
        spec={k: config["entropy"][k] for k in ("source", "texts", "seed")},
    log:
        res("logs/entropy_texts.log"),
    conda:
        "../envs/ml.yaml"
    script:
        "../workflow_scripts/steps/entropy_texts.py"


rule entropy_checkpoint:
    """One checkpoint's per-layer knowledge entropy and its per-text coefficients."""
    input:
        model=entropy_model,
        texts=res("entropy/texts.parquet"),
    output:
        table=res("entropy/{checkpoint}/layers.parquet"),
        coefficients=res("entropy/{checkpoint}/coefficients.safetensors"),
    wildcard_constraints:
        checkpoint=r"base|fold\d+_(A|AB)",
    params:
        name=lambda wc: wc.checkpoint,
        spec={k: config["entropy"][k] for k in ("max_tokens", "bootstrap", "seed")},
    threads: 2
    resources:
        mem_mb=4000,
        gpu=1,
    log:
        res("logs/entropy_checkpoint/{checkpoint}.log"),
    benchmark:
        res("benchmarks/entropy_checkpoint/{checkpoint}.tsv")
    conda:
        "../envs/ml.yaml"
    script:
        "../workflow_scripts/steps/entropy_checkpoint.py"


rule entropy_report:
    """Every configured checkpoint's knowledge entropy, and its paired difference from the first; with
    entropy.arms also every update run's entropy against its acquisition and retention."""
    input:
        tables=expand(res("entropy/{checkpoint}/layers.parquet"), checkpoint=config["entropy"]["checkpoints"]),
        coefficients=expand(res("entropy/{checkpoint}/coefficients.safetensors"),
                            checkpoint=config["entropy"]["checkpoints"]),
        rows=run_files("row", reported=True) if config["entropy"]["arms"] else [],
        outcomes=run_files("outcomes", reported=True) if config["entropy"]["arms"] else [],
    output:
        summary=res("report/entropy.md"),
        table=report(
            res("report/entropy.csv"),
            caption="../report/entropy_table.rst",
            category="Knowledge entropy",
            labels={"table": "entropy by checkpoint"},
        ),
        figure=report(
            res("figures/entropy_layers.png"),
            caption="../report/entropy_layers.rst",
            category="Knowledge entropy",
            labels={"figure": "entropy per layer"},
        ),
        **entropy_arm_outputs(),
    params:
        names=config["entropy"]["checkpoints"],
        spec={k: config["entropy"][k] for k in ("bootstrap", "seed")},
        model=describe_model(config["model"]["source"], config["model"]["dtype"]),
    log:
        res("logs/entropy_report.log"),
    conda:
        "../envs/ml.yaml"
    script:
        "../workflow_scripts/steps/entropy_report.py"
