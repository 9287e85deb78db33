# Dissonance awareness: the fine-tuned setting, balanced probe texts, features, classifiers, report.
# (The slices H/F and the history usage H live in rules/stages.smk, shared with every family.)


rule finetune_awareness:
    """Fine-tune the base model on F until it knows them (the fine-tuned setting's model)."""
    input:
        model=res("model"),
        facts=res("facts/facts.parquet"),
        slices=res("awareness/slices.parquet"),
    output:
        model_dir=directory(res("models/awareness_finetuned")),
        history=res("awareness/finetuned_training.parquet"),
        known=res("awareness/finetuned_known.parquet"),
    params:
        slice="F",
        training=training_params(config["awareness"]["finetune_epochs"], stop_at_accuracy=1.0),
    threads: 2
    resources:
        mem_mb=6000,
        gpu=1,
    log:
        res("logs/finetune_awareness.log"),
    benchmark:
        res("benchmarks/finetune_awareness.tsv")
    conda:
        "../envs/ml.yaml"
    script:
        "../workflow_scripts/steps/finetune_slice.py"


rule awareness_samples:
    """Balanced novel / familiar / dissonant probe texts of one setting."""
    input:
        facts=res("facts/facts.parquet"),
        novel=res("facts/novel.parquet"),
        slices=res("awareness/slices.parquet"),
        known=awareness_known_table,
    output:
        samples=res("awareness/{setting}/samples.parquet"),
    wildcard_constraints:
        setting="pretrained|finetuned",
    params:
        setting=lambda wc: wc.setting,
        n_per_class=config["awareness"]["n_per_class"],
        seed=config["awareness"]["slice_seed"],
    log:
        res("logs/awareness_samples_{setting}.log"),
    benchmark:
        res("benchmarks/awareness_samples_{setting}.tsv")
    conda:
        "../envs/ml.yaml"
    script:
        "../workflow_scripts/steps/awareness_samples.py"


rule awareness_features:
    """Activations, gradients (every linear module), output-only features and the one-feature baselines
    (target log-probability, token count) of every probe text."""
    input:
        model=awareness_model,
        samples=res("awareness/{setting}/samples.parquet"),
        usage=res("usage/history_H.safetensors"),
    output:
        features=res("awareness/{setting}/features.parquet"),
        catalog=res("awareness/{setting}/feature_catalog.parquet"),
    wildcard_constraints:
        setting="pretrained|finetuned",
    threads: 2
    resources:
        mem_mb=6000,
        gpu=1,
        batch_size=config["awareness"]["feature_batch_size"],  # a runtime knob: features are batch-invariant
    log:
        res("logs/awareness_features_{setting}.log"),
    benchmark:
        res("benchmarks/awareness_features_{setting}.tsv")
    conda:
        "../envs/ml.yaml"
    script:
        "../workflow_scripts/steps/awareness_features.py"


rule awareness_classify:
    """Headline (internal vs baselines over resplits), classifier, normalisation and feature-set ablations
    (over seeds), per-sample test predictions, best classifier (skops)."""
    input:
        samples=res("awareness/{setting}/samples.parquet"),
        features=res("awareness/{setting}/features.parquet"),
        catalog=res("awareness/{setting}/feature_catalog.parquet"),
    output:
        metrics=res("awareness/{setting}/metrics.parquet"),
        confusion=res("awareness/{setting}/confusion.parquet"),
        predictions=res("awareness/{setting}/predictions.parquet"),
        importance=res("awareness/{setting}/importance.parquet"),
        model=res("awareness/{setting}/classifier.skops"),
        model_info=res("awareness/{setting}/classifier.json"),
    wildcard_constraints:
        setting="pretrained|finetuned",
    params:
        setting=lambda wc: wc.setting,
        seeds=config["awareness"]["seeds"],
        resplits=config["awareness"]["resplits"],
        classifiers=config["awareness"]["classifiers"],
        ablation_classifier=config["awareness"]["ablation_classifier"],
        test_fraction=config["awareness"]["test_fraction"],
        block_ranges=config["awareness"]["block_ranges"],
    threads: 1  # scikit-learn fits one at a time: the two settings' jobs run side by side on 2 cores
    resources:
        mem_mb=4000,
    log:
        res("logs/awareness_classify_{setting}.log"),
    benchmark:
        res("benchmarks/awareness_classify_{setting}.tsv")
    conda:
        "../envs/ml.yaml"
    script:
        "../workflow_scripts/steps/awareness_classify.py"


rule awareness_report:
    """One metrics table, the paired tests (internal vs baselines), a readable summary with intervals, figures."""
    input:
        metrics=expand(res("awareness/{setting}/metrics.parquet"), setting=config["awareness"]["settings"]),
        confusion=expand(res("awareness/{setting}/confusion.parquet"), setting=config["awareness"]["settings"]),
        importance=expand(res("awareness/{setting}/importance.parquet"), setting=config["awareness"]["settings"]),
        predictions=expand(res("awareness/{setting}/predictions.parquet"), setting=config["awareness"]["settings"]),
        samples=expand(res("awareness/{setting}/samples.parquet"), setting=config["awareness"]["settings"]),
        features=expand(res("awareness/{setting}/features.parquet"), setting=config["awareness"]["settings"]),
        catalog=expand(res("awareness/{setting}/feature_catalog.parquet"), setting=config["awareness"]["settings"]),
    output:
        metrics=res("awareness/metrics.parquet"),
        paired=res("awareness/paired_tests.parquet"),
        summary=res("report/awareness.md"),
        csv=report(
            res("report/awareness.csv"),
            caption="../report/awareness_table.rst",
            category="Dissonance awareness",
            labels={"table": "classifier summary"},
        ),
        confusion=report(res("figures/awareness_confusion.png"), caption="../report/awareness_confusion.rst", category="Dissonance awareness",
                              labels={"figure": "confusion matrices"}),
        feature_sets=report(res("figures/awareness_feature_sets.png"), caption="../report/awareness_feature_sets.rst", category="Dissonance awareness",
                              labels={"figure": "feature sets"}),
        importance=report(res("figures/awareness_importance.png"), caption="../report/awareness_importance.rst", category="Dissonance awareness",
                              labels={"figure": "feature importance"}),
        distributions=report(res("figures/awareness_distributions.png"), caption="../report/awareness_distributions.rst", category="Dissonance awareness",
                              labels={"figure": "feature distributions"}),
    params:
        settings=config["awareness"]["settings"],
        model=describe_model(config["model"]["source"], config["model"]["dtype"]),
        test_fraction=config["awareness"]["test_fraction"],
    log:
        res("logs/awareness_report.log"),
    benchmark:
        res("benchmarks/awareness_report.tsv")
    conda:
        "../envs/ml.yaml"
    script:
        "../workflow_scripts/steps/awareness_report.py"
