# The run table for people to read, and the leaderboard over every run row.


rule run_table:
    """Every configured run: scenario, method, variant, fold, seed and its typed params."""
    output:
        table=res("runs.tsv"),
    params:
        rows=table_rows(RUNS),
    log:
        res("logs/run_table.log"),
    conda:
        "../envs/ml.yaml"
    script:
        "../workflow_scripts/steps/run_table.py"


rule leaderboard:
    """One table over every run row (intervals, paired tests against the reference) and the Pareto figure."""
    input:
        rows=run_files("row", reported=True),
        outcomes=run_files("outcomes", reported=True),
        **({"remix_metrics": res("remix/metrics.parquet"), "remix_tests": res("remix/comparisons.parquet")}
           if config["remix"]["sets"] else {}),
    output:
        table=res("leaderboard/leaderboard.parquet"),
        csv=report(
            res("report/leaderboard.csv"),
            caption="../report/leaderboard.rst",
            category="Leaderboard",
            labels={"table": "leaderboard (CSV)"},
        ),
        html=report(
            res("report/leaderboard.html"),
            caption="../report/leaderboard.rst",
            category="Leaderboard",
            labels={"table": "leaderboard"},
        ),
        summary=res("report/leaderboard.md"),
        pareto=report(
            res("figures/leaderboard_pareto.png"),
            caption="../report/leaderboard_pareto.rst",
            category="Leaderboard",
            labels={"figure": "retention x acquisition"},
        ),
    params:
        reference=config["updates"]["reference"],
        model=describe_model(config["model"]["source"], config["model"]["dtype"]),
    log:
        res("logs/leaderboard.log"),
    benchmark:
        res("benchmarks/leaderboard.tsv")
    conda:
        "../envs/ml.yaml"
    script:
        "../workflow_scripts/steps/leaderboard.py"
