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
include: "rules/awareness.smk"
include: "rules/updates.smk"


rule all:
    default_target: True
    input:
        res("report/familiarity.md"),
        res("figures/known_by_relation.png"),
        res("facts/novel_stats.json"),
        res("report/awareness.md"),
        expand(res("awareness/{setting}/classifier.skops"), setting=config["awareness"]["settings"]),
        expand(res("report/updates_{experiment}.md"), experiment=update_experiments()),
        [res("report/updates.md")] if update_experiments() else [],


onsuccess:
    print_summary(res("report/familiarity.md"))
    print_summary(res("report/awareness.md"), max_lines=30)
    if update_experiments():
        print_summary(res("report/updates.md"), max_lines=30)
