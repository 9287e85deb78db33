rule updates_slices:
    """Disjoint seeded slices of one fold: H (history), A (old facts), B (new facts)."""
    input:
        facts=res("facts/facts.parquet"),
    output:
        slices=res("updates/fold{fold}/slices.parquet"),
    params:
        sizes=config["updates"]["sizes"],
        seed=lambda wc: int(wc.fold),
    log:
        res("logs/updates_slices_fold{fold}.log"),
    benchmark:
        res("benchmarks/updates_slices_fold{fold}.tsv")
    conda:
        "../envs/ml.yaml"
    script:
        "../workflow_scripts/steps/slice_facts.py"


rule updates_history:
    """Usage while fine-tuning the base model on H (for lottery and specific-general)."""
    input:
        model=res("model"),
        facts=res("facts/facts.parquet"),
        slices=res("updates/fold{fold}/slices.parquet"),
    output:
        usage=res("updates/fold{fold}/usage_H.safetensors"),
        history=res("updates/fold{fold}/training_H.parquet"),
    params:
        slice="H",
        training=training_params(config["updates"]["history_epochs"]),
    threads: 2
    resources:
        mem_mb=6000,
        gpu=1,
    log:
        res("logs/updates_history_fold{fold}.log"),
    benchmark:
        res("benchmarks/updates_history_fold{fold}.tsv")
    conda:
        "../envs/ml.yaml"
    script:
        "../workflow_scripts/steps/finetune_slice.py"


rule updates_old:
    """The old stage: the base model fine-tuned on A, with usage (stubborn/plastic) and what it knows."""
    input:
        model=res("model"),
        facts=res("facts/facts.parquet"),
        slices=res("updates/fold{fold}/slices.parquet"),
    output:
        model_dir=directory(res("updates/fold{fold}/model_A")),
        usage=res("updates/fold{fold}/usage_A.safetensors"),
        history=res("updates/fold{fold}/training_A.parquet"),
        known=res("updates/fold{fold}/known_A.parquet"),
    params:
        slice="A",
        training=training_params(config["updates"]["old_epochs"]),
    threads: 2
    resources:
        mem_mb=6000,
        gpu=1,
    log:
        res("logs/updates_old_fold{fold}.log"),
    benchmark:
        res("benchmarks/updates_old_fold{fold}.tsv")
    conda:
        "../envs/ml.yaml"
    script:
        "../workflow_scripts/steps/finetune_slice.py"


rule updates_oracle:
    """A full fine-tune of model A on B, only for its usage (candidate and specific are oracles)."""
    input:
        model=res("updates/fold{fold}/model_A"),
        facts=res("facts/facts.parquet"),
        slices=res("updates/fold{fold}/slices.parquet"),
    output:
        usage=res("updates/fold{fold}/usage_B.safetensors"),
        history=res("updates/fold{fold}/training_B_oracle.parquet"),
    params:
        slice="B",
        training=training_params(config["updates"]["new_epochs"]),
    threads: 2
    resources:
        mem_mb=6000,
        gpu=1,
    log:
        res("logs/updates_oracle_fold{fold}.log"),
    benchmark:
        res("benchmarks/updates_oracle_fold{fold}.tsv")
    conda:
        "../envs/ml.yaml"
    script:
        "../workflow_scripts/steps/finetune_slice.py"


rule updates_arm:
    """One arm of experiment 2.1: model A learns B with one strategy and k, same routine for all."""
    input:
        model=res("updates/fold{fold}/model_A"),
        facts=res("facts/facts.parquet"),
        slices=res("updates/fold{fold}/slices.parquet"),
        known=res("updates/fold{fold}/known_A.parquet"),
        usage_old=res("updates/fold{fold}/usage_A.safetensors"),
        usage_new=res("updates/fold{fold}/usage_B.safetensors"),
        usage_history=res("updates/fold{fold}/usage_H.safetensors"),
    output:
        row=res("updates/exp{experiment}/fold{fold}/{strategy}_k{k}.parquet"),
        curve=res("updates/exp{experiment}/fold{fold}/{strategy}_k{k}_curve.parquet"),
    wildcard_constraints:
        experiment="2_1",
        fold=r"\d+",
        strategy="[a-z_]+",
        k=r"all|[0-9.]+",
    params:
        experiment=lambda wc: wc.experiment.replace("_", "."),
        fold=lambda wc: int(wc.fold),
        strategy=lambda wc: wc.strategy,
        k=lambda wc: wc.k,
        training=training_params(config["updates"]["new_epochs"]),
        lora=config["updates"]["lora"],
        usage_score=config["updates"]["usage_score"],
    threads: 2
    resources:
        mem_mb=6000,
        gpu=1,
    log:
        res("logs/updates_arm_{experiment}_fold{fold}_{strategy}_k{k}.log"),
    benchmark:
        res("benchmarks/updates_arm_{experiment}_fold{fold}_{strategy}_k{k}.tsv")
    conda:
        "../envs/ml.yaml"
    script:
        "../workflow_scripts/steps/updates_arm.py"


rule updates_report:
    """One table per experiment, a readable summary, and old/new accuracy against k."""
    input:
        rows=lambda wc: update_arm_outputs(wc.experiment, "row"),
        curves=lambda wc: update_arm_outputs(wc.experiment, "curve"),
        known=expand(res("updates/fold{fold}/known_A.parquet"), fold=config["updates"]["folds"]),
    output:
        metrics=res("updates/exp{experiment}/metrics.parquet"),
        curves=res("updates/exp{experiment}/curves.parquet"),
        csv=res("report/updates_{experiment}.csv"),
        summary=res("report/updates_{experiment}.md"),
        figure=report(
            res("figures/updates_{experiment}_old_new_vs_k.png"),
            caption="../report/updates_old_new_vs_k.rst",
            category="Targeted updates",
        ),
    wildcard_constraints:
        experiment="2_1",
    log:
        res("logs/updates_report_{experiment}.log"),
    benchmark:
        res("benchmarks/updates_report_{experiment}.tsv")
    conda:
        "../envs/ml.yaml"
    script:
        "../workflow_scripts/steps/updates_report.py"
