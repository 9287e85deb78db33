# Shared stages, consumed by every family: the history/awareness slices (H, F), the history usage H,
# and per fold the slices A, B, C, K and the two full fine-tunes that make checkpoints A and AB.


rule awareness_slices:
    """Disjoint seeded slices of the facts: H (history usage) and F (fine-tuned setting)."""
    input:
        facts=res("facts/facts.parquet"),
    output:
        slices=res("awareness/slices.parquet"),
    params:
        sizes={"H": config["awareness"]["n_history"], "F": config["awareness"]["n_finetune"]},
        seed=config["awareness"]["slice_seed"],
    log:
        res("logs/awareness_slices.log"),
    benchmark:
        res("benchmarks/awareness_slices.tsv")
    conda:
        "../envs/ml.yaml"
    script:
        "../workflow_scripts/steps/slice_facts.py"



rule history_usage:
    """Fine-tune a copy of the base model on H and record per-neuron usage (historical usage)."""
    input:
        model=res("model"),
        facts=res("facts/facts.parquet"),
        slices=res("awareness/slices.parquet"),
    output:
        usage=res("usage/history_H.safetensors"),
        history=res("awareness/history_training.parquet"),
    params:
        slice="H",
        training=training_params(config["awareness"]["history_epochs"]),
    threads: 2
    resources:
        mem_mb=6000,
        gpu=1,
    log:
        res("logs/history_usage.log"),
    benchmark:
        res("benchmarks/history_usage.tsv")
    conda:
        "../envs/ml.yaml"
    script:
        "../workflow_scripts/steps/finetune_slice.py"


rule fold_slices:
    """Disjoint seeded slices of one fold: A, B, C (new to the pre-trained model) and K (known to it)."""
    input:
        facts=res("facts/facts.parquet"),
        history_slices=res("awareness/slices.parquet"),
        known_by_base=res("probe/facts.parquet"),
    output:
        slices=res("stages/fold{fold}/slices.parquet"),
    params:
        sizes=config["updates"]["sizes"],
        seed=lambda wc: int(wc.fold),
        match_relations=config["updates"]["match_relations"],
    log:
        res("logs/fold_slices_fold{fold}.log"),
    benchmark:
        res("benchmarks/fold_slices_fold{fold}.tsv")
    conda:
        "../envs/ml.yaml"
    script:
        "../workflow_scripts/steps/fold_slices.py"


rule checkpoint_a:
    """Checkpoint A: the pre-trained model fully fine-tuned on the old facts A, with A's usage."""
    input:
        model=res("model"),
        facts=res("facts/facts.parquet"),
        slices=res("stages/fold{fold}/slices.parquet"),
    output:
        model_dir=directory(res("stages/fold{fold}/model_A")),
        usage=res("stages/fold{fold}/usage_A.safetensors"),
        history=res("stages/fold{fold}/training_A.parquet"),
        known=res("stages/fold{fold}/known_A.parquet"),
    params:
        slice="A",
        score=["A"],
        training=lambda wc: stage_training(config["updates"]["old_epochs"], int(wc.fold)),
    threads: 2
    resources:
        mem_mb=6000,
        gpu=1,
    log:
        res("logs/checkpoint_a_fold{fold}.log"),
    benchmark:
        res("benchmarks/checkpoint_a_fold{fold}.tsv")
    conda:
        "../envs/ml.yaml"
    script:
        "../workflow_scripts/steps/finetune_slice.py"


rule checkpoint_b:
    """Checkpoint AB: checkpoint A fully fine-tuned on the new facts B, with B's usage."""
    input:
        model=res("stages/fold{fold}/model_A"),
        facts=res("facts/facts.parquet"),
        slices=res("stages/fold{fold}/slices.parquet"),
    output:
        model_dir=directory(res("stages/fold{fold}/model_AB")),
        usage=res("stages/fold{fold}/usage_B.safetensors"),
        history=res("stages/fold{fold}/training_B.parquet"),
        known=res("stages/fold{fold}/known_AB.parquet"),
    params:
        slice="B",
        score=["A", "B"],
        training=lambda wc: stage_training(config["updates"]["old_epochs"], int(wc.fold)),
    threads: 2
    resources:
        mem_mb=6000,
        gpu=1,
    log:
        res("logs/checkpoint_b_fold{fold}.log"),
    benchmark:
        res("benchmarks/checkpoint_b_fold{fold}.tsv")
    conda:
        "../envs/ml.yaml"
    script:
        "../workflow_scripts/steps/finetune_slice.py"
