# Targeted continual updates (experiments 2.1, 2.2, 3.1, 3.3; see workflow_scripts/updates/design.py).
# Per fold: slices -> stage A (pre-trained -> A) -> stage B (A -> B); every arm is its own cached job.


wildcard_constraints:
    fold=r"\d+",


rule updates_slices:
    """Disjoint seeded slices of one fold: A, B, C (new to the pre-trained model) and K (known to it)."""
    input:
        facts=res("facts/facts.parquet"),
        history_slices=res("awareness/slices.parquet"),
        known_by_base=res("probe/facts.parquet"),
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
        "../workflow_scripts/steps/updates_slices.py"


rule updates_stage_a:
    """Stage A: the pre-trained model fully fine-tuned on the old facts A, with A's usage."""
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
        score=["A"],
        training=lambda wc: training_params(config["updates"]["old_epochs"], seed=config["training"]["seed"] + int(wc.fold)),
    threads: 2
    resources:
        mem_mb=6000,
        gpu=1,
    log:
        res("logs/updates_stage_a_fold{fold}.log"),
    benchmark:
        res("benchmarks/updates_stage_a_fold{fold}.tsv")
    conda:
        "../envs/ml.yaml"
    script:
        "../workflow_scripts/steps/finetune_slice.py"


rule updates_stage_b:
    """Stage B: model A fully fine-tuned on B, with B's usage (2.1's oracle pass; 3.x's start)."""
    input:
        model=res("updates/fold{fold}/model_A"),
        facts=res("facts/facts.parquet"),
        slices=res("updates/fold{fold}/slices.parquet"),
    output:
        model_dir=directory(res("updates/fold{fold}/model_AB")),
        usage=res("updates/fold{fold}/usage_B.safetensors"),
        history=res("updates/fold{fold}/training_B.parquet"),
        known=res("updates/fold{fold}/known_AB.parquet"),
    params:
        slice="B",
        score=["A", "B"],
        training=lambda wc: training_params(config["updates"]["old_epochs"], seed=config["training"]["seed"] + int(wc.fold)),
    threads: 2
    resources:
        mem_mb=6000,
        gpu=1,
    log:
        res("logs/updates_stage_b_fold{fold}.log"),
    benchmark:
        res("benchmarks/updates_stage_b_fold{fold}.tsv")
    conda:
        "../envs/ml.yaml"
    script:
        "../workflow_scripts/steps/finetune_slice.py"


rule updates_arm:
    """One arm: a start model learns a slice with one strategy and k, through the one training routine."""
    input:
        unpack(update_arm_inputs),
    output:
        row=res("updates/exp{experiment}/fold{fold}/{setting}/{strategy}_k{k}.parquet"),
        curve=res("updates/exp{experiment}/fold{fold}/{setting}/{strategy}_k{k}_curve.parquet"),
    wildcard_constraints:
        experiment="2_1|2_2|3_1|3_3",
        setting=r"lr[0-9.]+_e\d+",
        strategy="[a-z_]+",
        k=r"all|[0-9.]+",
    params:
        experiment=lambda wc: wc.experiment,
        setting=lambda wc: wc.setting,
        fold=lambda wc: int(wc.fold),
        strategy=lambda wc: wc.strategy,
        k=lambda wc: wc.k,
        training=config["training"],
        lora=config["updates"]["lora"],
        usage_score=config["updates"]["usage_score"],
        curves=lambda wc: wc.experiment.replace("_", ".") in config["updates"]["curves"],
    threads: 2
    resources:
        mem_mb=6000,
        gpu=1,
    log:
        res("logs/updates_arm_{experiment}_fold{fold}_{setting}_{strategy}_k{k}.log"),
    benchmark:
        res("benchmarks/updates_arm_{experiment}_fold{fold}_{setting}_{strategy}_k{k}.tsv")
    conda:
        "../envs/ml.yaml"
    script:
        "../workflow_scripts/steps/updates_arm.py"


rule updates_report:
    """One tidy table per experiment, a readable summary, accuracy against k and the old-vs-new Pareto."""
    input:
        rows=lambda wc: update_arm_outputs(wc.experiment, "row"),
        curves=lambda wc: update_arm_outputs(wc.experiment, "curve"),
    output:
        metrics=res("updates/exp{experiment}/metrics.parquet"),
        curves=res("updates/exp{experiment}/curves.parquet"),
        csv=res("report/updates_{experiment}.csv"),
        summary=res("report/updates_{experiment}.md"),
        vs_k=report(
            res("figures/updates_{experiment}_vs_k.png"),
            caption="../report/updates_vs_k.rst",
            category="Targeted updates",
            subcategory="Experiment {experiment}",
        ),
        pareto=report(
            res("figures/updates_{experiment}_pareto.png"),
            caption="../report/updates_pareto.rst",
            category="Targeted updates",
            subcategory="Experiment {experiment}",
        ),
    wildcard_constraints:
        experiment="2_1|2_2|3_1|3_3",
    params:
        experiment=lambda wc: wc.experiment,
    log:
        res("logs/updates_report_{experiment}.log"),
    benchmark:
        res("benchmarks/updates_report_{experiment}.tsv")
    conda:
        "../envs/ml.yaml"
    script:
        "../workflow_scripts/steps/updates_report.py"


rule updates_overview:
    """Across experiments: dissonant vs matched update, where stubborn neurons sit, usage distributions."""
    input:
        metrics=expand(res("updates/exp{experiment}/metrics.parquet"), experiment=update_experiments()),
        curves=expand(res("updates/exp{experiment}/curves.parquet"), experiment=update_experiments()),
        usage=expand(res("updates/fold{fold}/usage_{stage}.safetensors"), fold=config["updates"]["folds"], stage=["A", "B"]),
        usage_history=res("usage/history_H.safetensors"),
        model=res("model"),
    output:
        summary=res("report/updates.md"),
        dissonance=report(
            res("figures/updates_dissonant_vs_matched.png"),
            caption="../report/updates_dissonant_vs_matched.rst",
            category="Targeted updates",
        ),
        location=report(
            res("figures/updates_stubborn_location.png"),
            caption="../report/updates_stubborn_location.rst",
            category="Targeted updates",
        ),
        usage=report(
            res("figures/updates_usage_distribution.png"),
            caption="../report/updates_usage_distribution.rst",
            category="Targeted updates",
        ),
        sweeps=report(
            res("figures/updates_sweeps.png"),
            caption="../report/updates_sweeps.rst",
            category="Targeted updates",
        ),
    params:
        usage_score=config["updates"]["usage_score"],
        k=config["updates"]["exp_2_1"]["k"],
    log:
        res("logs/updates_overview.log"),
    benchmark:
        res("benchmarks/updates_overview.tsv")
    conda:
        "../envs/ml.yaml"
    script:
        "../workflow_scripts/steps/updates_overview.py"
