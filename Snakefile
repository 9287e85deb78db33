# Stubborn: continual knowledge updates in language models without destroying what they know.
# This file holds only configuration, validation, includes and target rules; stages live in
# rules/*.smk and their logic in the workflow_scripts package.
import os
import sys

from snakemake.utils import min_version

min_version("9.0")

sys.path.insert(0, workflow.basedir)
from workflow_scripts.config import validate_config  # noqa: E402

configfile: os.path.join(workflow.basedir, "config.yaml")

# Fails before any job runs, naming every bad key and the expected type.
config.update(validate_config(config))


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/model.smk"
include: "rules/facts.smk"
include: "rules/probe.smk"
include: "rules/stages.smk"
include: "rules/awareness.smk"
include: "rules/editing.smk"
include: "rules/merging.smk"
include: "rules/entropy.smk"
include: "rules/entropy_injection.smk"
include: "rules/remix.smk"
include: "rules/updates.smk"
include: "rules/leaderboard.smk"


rule all:
    default_target: True
    input:
        res("report/familiarity.md"),
        res("figures/known_by_relation.png"),
        res("facts/novel_stats.json"),
        res("report/awareness.md"),
        expand(res("awareness/{setting}/classifier.skops"), setting=config["awareness"]["settings"]),
        res("runs.tsv"),
        expand(res("report/updates_{scenario}.md"), scenario=update_scenarios()),
        [res("report/updates.md"), res("report/leaderboard.md")] if RUNS else [],
        [res("report/lr_tuning.tsv")] if TUNING_RUNS & set(update_scenarios()) else [],
        res("report/editing_layers.md"),
        [res("report/editing_sequential.md")] if SEQUENTIAL else [],
        [res("report/merging.md")] if ROUNDS or CHALLENGES or merge_run_files("row") else [],
        [res("report/entropy.md")] if config["entropy"]["checkpoints"] else [],
        [res("report/entropy_injection.md")] if config["entropy"]["injection"]["enabled"] else [],
        [res("report/remix.md")] if config["remix"]["sets"] else [],


rule updates:
    """The knowledge-update scenarios only (no dissonance awareness): the run table, every scenario's
    report, the overview and the leaderboard. `snakemake --cores all updates`."""
    input:
        res("runs.tsv"),
        expand(res("report/updates_{scenario}.md"), scenario=update_scenarios()),
        [res("report/updates.md"), res("report/leaderboard.md")] if RUNS else [],
        [res("report/lr_tuning.tsv")] if TUNING_RUNS & set(update_scenarios()) else [],


onsuccess:
    print_summary(res("report/familiarity.md"))
    print_summary(res("report/awareness.md"), max_lines=30)
    if RUNS:
        print_summary(res("report/leaderboard.md"), max_lines=40)
    if SEQUENTIAL:
        print_summary(res("report/editing_sequential.md"), max_lines=20)
    if ROUNDS or CHALLENGES or merge_run_files("row"):
        print_summary(res("report/merging.md"), max_lines=20)
