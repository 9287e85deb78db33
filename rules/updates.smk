# Knowledge updates: one rule `update` for every run of the run table (scenario x method x variant x
# fold), then one report per scenario and an overview across scenarios. Scenarios are defined in
# workflow_scripts/scenarios/design.py, methods in workflow_scripts/methods/.

from workflow_scripts.methods.registry import METHODS
from workflow_scripts.scenarios.design import SCENARIOS, TUNING_SCENARIO


wildcard_constraints:
    fold=r"\d+",


rule update_start:
    """A scenario's start model scored once per fold, shared by every run of it: each slice's accuracy
    just before the update, and the metrics' reference state (the start model's neighbourhood predictions)."""
    input:
        unpack(update_start_inputs),
    output:
        start=res("runs/{scenario}/start_fold{fold}.json"),
    wildcard_constraints:
        scenario="|".join(SCENARIOS),
    params:
        scenario=lambda wc: wc.scenario,
    threads: 2
    resources:
        mem_mb=4000,
        gpu=1,
    log:
        res("logs/update_start/{scenario}/fold{fold}.log"),
    benchmark:
        res("benchmarks/update_start/{scenario}/fold{fold}.tsv")
    conda:
        "../envs/ml.yaml"
    script:
        "../workflow_scripts/steps/update_start.py"


rule update:
    """One run: a scenario's start checkpoint updated by one method with one setting, scored by the one evaluator."""
    input:
        unpack(update_inputs),
    output:
        row=res("runs/{scenario}/{method}/{variant}/fold{fold}/row.parquet"),
        curve=res("runs/{scenario}/{method}/{variant}/fold{fold}/curve.parquet"),
        outcomes=res("runs/{scenario}/{method}/{variant}/fold{fold}/outcomes.parquet"),
    wildcard_constraints:
        scenario="|".join(SCENARIOS),
        method="|".join(METHODS),
        variant=r"[^/]+",
    params:
        run=lambda wc: run_of(wc).job_params(),
        training=config["training"],
        entropy=entropy_arm_spec(),  # entropy.arms: the result's knowledge entropy (inputs entropy_texts, entropy_start)
    threads: 2  # one update at a time (the profile's gpu=1); `make run` on a CPU-only machine: 1 thread, several at once
    resources:
        mem_mb=6000,
        gpu=1,
    log:
        res("logs/update/{scenario}/{method}/{variant}/fold{fold}.log"),
    benchmark:
        res("benchmarks/update/{scenario}/{method}/{variant}/fold{fold}.tsv")
    conda:
        "../envs/ml.yaml"
    script:
        "../workflow_scripts/steps/update.py"


rule scenario_report:
    """One tidy table per scenario, a summary with intervals, accuracy against k and the old-vs-new Pareto."""
    input:
        rows=lambda wc: run_files("row", wc.scenario),
        curves=lambda wc: run_files("curve", wc.scenario),
    output:
        metrics=res("updates/{scenario}/metrics.parquet"),
        curves=res("updates/{scenario}/curves.parquet"),
        csv=report(
            res("report/updates_{scenario}.csv"),
            caption="../report/updates_table.rst",
            category="Knowledge updates",
            subcategory="{scenario}",
            labels={"scenario": "{scenario}", "table": "summary"},
        ),
        summary=res("report/updates_{scenario}.md"),
        vs_k=report(
            res("figures/updates_{scenario}_vs_k.png"),
            caption="../report/updates_vs_k.rst",
            category="Knowledge updates",
            subcategory="{scenario}",
            labels={"scenario": "{scenario}", "figure": "accuracy vs k"},
        ),
        pareto=report(
            res("figures/updates_{scenario}_pareto.png"),
            caption="../report/updates_pareto.rst",
            category="Knowledge updates",
            subcategory="{scenario}",
            labels={"scenario": "{scenario}", "figure": "retention vs acquisition"},
        ),
    wildcard_constraints:
        scenario="|".join(SCENARIOS),
    params:
        scenario=lambda wc: wc.scenario,
        model=describe_model(config["model"]["source"], config["model"]["dtype"]),
    log:
        res("logs/scenario_report_{scenario}.log"),
    benchmark:
        res("benchmarks/scenario_report_{scenario}.tsv")
    conda:
        "../envs/ml.yaml"
    script:
        "../workflow_scripts/steps/scenario_report.py"


rule lr_choice:
    """One method family's learning rate, chosen on the validation slice V by the declared rule."""
    input:
        rows=lambda wc: [f for f in run_files("row", TUNING_SCENARIO) if f"/{wc.method}/" in f],
    output:
        rates=res("tuning/lr_{method}.json"),
        table=res("tuning/lr_{method}.tsv"),
    wildcard_constraints:
        method="|".join(METHODS),
    log:
        res("logs/lr_choice_{method}.log"),
    benchmark:
        res("benchmarks/lr_choice_{method}.tsv")
    conda:
        "../envs/ml.yaml"
    script:
        "../workflow_scripts/steps/lr_choice.py"


rule lr_tuning_table:
    """Every family's tuning table and chosen rate in one table."""
    input:
        tables=expand(res("tuning/lr_{method}.tsv"), method=tuned_methods()),
    output:
        table=report(
            res("report/lr_tuning.tsv"),
            caption="../report/lr_tuning.rst",
            category="Knowledge updates",
            labels={"table": "learning-rate tuning"},
        ),
    log:
        res("logs/lr_tuning_table.log"),
    conda:
        "../envs/ml.yaml"
    script:
        "../workflow_scripts/steps/lr_choice.py"


rule updates_overview:
    """Across scenarios: dissonant vs matched update, where stubborn neurons sit, usage distributions, sweeps."""
    input:
        metrics=expand(res("updates/{scenario}/metrics.parquet"), scenario=update_scenarios(reported=True)),
        curves=expand(res("updates/{scenario}/curves.parquet"), scenario=update_scenarios(reported=True)),
        usage=expand(res("stages/fold{fold}/usage_{stage}.safetensors"), fold=config["updates"]["folds"], stage=["A", "B"]),
        usage_history=res("usage/history_H.safetensors"),
        modules=res("model_modules.parquet"),
    output:
        summary=res("report/updates.md"),
        dissonance=report(
            res("figures/updates_dissonant_vs_matched.png"),
            caption="../report/updates_dissonant_vs_matched.rst",
            category="Knowledge updates",
            labels={"figure": "dissonant vs matched"},
        ),
        location=report(
            res("figures/updates_stubborn_location.png"),
            caption="../report/updates_stubborn_location.rst",
            category="Knowledge updates",
            labels={"figure": "where stubborn neurons sit"},
        ),
        usage=report(
            res("figures/updates_usage_distribution.png"),
            caption="../report/updates_usage_distribution.rst",
            category="Knowledge updates",
            labels={"figure": "usage distribution"},
        ),
        sweeps=report(
            res("figures/updates_sweeps.png"),
            caption="../report/updates_sweeps.rst",
            category="Knowledge updates",
            labels={"figure": "learning-rate and epoch sweeps"},
        ),
    params:
        usage_score=config["methods"]["neurons"]["usage_score"],
        model=describe_model(config["model"]["source"], config["model"]["dtype"]),
        k=neuron_ks(),
    log:
        res("logs/updates_overview.log"),
    benchmark:
        res("benchmarks/updates_overview.tsv")
    conda:
        "../envs/ml.yaml"
    script:
        "../workflow_scripts/steps/updates_overview.py"
