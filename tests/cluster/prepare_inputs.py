"""Inputs for the SLURM cluster test (tests/cluster/slurm.sh), made with the end-to-end test's own
fixtures so that the cluster run uses exactly the tiny model and config of tests/test_workflow.py.

Not collected by `pytest` (the name does not start with test_); slurm.sh runs it explicitly:

    CLUSTER_WORK=/some/dir python -m pytest -q -p no:cacheprovider --basetemp /some/dir/pytest \
        tests/cluster/prepare_inputs.py

It writes $CLUSTER_WORK/model (the pre-trained tiny GPT-2) and $CLUSTER_WORK/config.yaml.
CLUSTER_CONFIG_CHANGES may hold a JSON object of write_config changes (key paths joined by "__").
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from test_workflow import write_config


def test_prepare_cluster_inputs(pretrained_tiny_dir):
    work = Path(os.environ["CLUSTER_WORK"])
    model = work / "model"
    if model.exists():
        shutil.rmtree(model)
    shutil.copytree(pretrained_tiny_dir, model)
    changes = json.loads(os.environ.get("CLUSTER_CONFIG_CHANGES") or "{}")
    write_config(work, model, **changes)
    assert (work / "config.yaml").is_file() and any(model.iterdir())
