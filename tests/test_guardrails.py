"""Guardrails on the workflow's structure: cluster placement of GPU rules, and a light DAG.

* Every rule that declares ``gpu=1`` in its ``resources:`` must be placed on the GPU partition by the
  SLURM profile (profiles/slurm/config.yaml ``set-resources``), or a cluster run would queue it on
  the CPU partition, where it finds no GPU.
* Building the DAG (the Snakefile, rules/*.smk and what they import) must not import torch: that
  costs seconds on every ``snakemake`` call, login nodes included.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import yaml

from conftest import REPO

SLURM_PROFILE = REPO / "profiles" / "slurm" / "config.yaml"
RULE_HEADER = re.compile(r"^(?:rule|checkpoint)\s+(\w+)\s*:", re.MULTILINE)
DIRECTIVE = re.compile(r"^(\s+)(\w+)\s*:(.*)$")
GPU_ONE = re.compile(r"(?<![\w.])gpu\s*=\s*1(?!\d)")

# Modules the Snakefile and rules/*.smk import while Snakemake builds the DAG.
DAG_TIME_MODULES = ["workflow_scripts.config", "workflow_scripts.scenarios.runs", "workflow_scripts.scenarios.design",
                    "workflow_scripts.methods.registry", "workflow_scripts.models.sources",
                    "workflow_scripts.remix.cells", "workflow_scripts.entropy.injection"]


def rule_blocks(text: str) -> dict[str, str]:
    """Rule (or checkpoint) name -> its source text, for one .smk/Snakefile."""
    headers = list(RULE_HEADER.finditer(text))
    ends = [m.start() for m in headers[1:]] + [len(text)]
    return {m.group(1): text[m.end():end] for m, end in zip(headers, ends)}


def directive(block: str, name: str) -> str:
    """The text of one directive of a rule (``resources:``, ...): its line and the lines indented below it."""
    lines = block.splitlines()
    for i, line in enumerate(lines):
        found = DIRECTIVE.match(line)
        if found and found.group(2) == name:
            indent = len(found.group(1))
            body = [found.group(3)]
            for following in lines[i + 1:]:
                if following.strip() and len(following) - len(following.lstrip()) <= indent:
                    break
                body.append(following)
            return "\n".join(body)
    return ""


def without_comments(text: str) -> str:
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def workflow_rules() -> dict[str, str]:
    blocks = {}
    for path in [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]:
        blocks.update(rule_blocks(path.read_text(encoding="utf-8")))
    return blocks


def gpu_rules() -> set[str]:
    return {name for name, block in workflow_rules().items()
            if GPU_ONE.search(without_comments(directive(block, "resources")))}


def test_the_rule_parser_finds_gpu_declarations():
    text = (
        "rule a:\n    input:\n        'x'\n    resources:\n        mem_mb=1,\n        gpu=1,\n    log:\n        'l'\n\n"
        "checkpoint b:\n    resources: gpu=1\n\n"
        "rule c:\n    resources:\n        # gpu=1 once\n        gpu=0,\n        ngpu=1,\n    params:\n        gpu=1\n"
    )
    blocks = rule_blocks(text)
    assert set(blocks) == {"a", "b", "c"}
    assert {n for n, b in blocks.items() if GPU_ONE.search(without_comments(directive(b, "resources")))} == {"a", "b"}


def test_every_gpu_rule_is_placed_by_the_slurm_profile():
    profile = yaml.safe_load(SLURM_PROFILE.read_text(encoding="utf-8"))
    placed = profile.get("set-resources") or {}
    cpu_partition = (profile.get("default-resources") or {}).get("slurm_partition")
    gpu = gpu_rules()
    assert gpu, "no rule declares gpu=1: the parser is broken"
    missing = sorted(gpu - set(placed))
    assert not missing, f"GPU rules without an entry in {SLURM_PROFILE.name} set-resources: {missing}"
    partitions = {rule: (placed[rule] or {}).get("slurm_partition") for rule in sorted(gpu)}
    assert all(partitions.values()), f"GPU rules without a slurm_partition: {partitions}"
    assert len(set(partitions.values())) == 1, f"GPU rules on different partitions: {partitions}"
    assert cpu_partition not in partitions.values(), f"GPU rules on the CPU partition {cpu_partition!r}"


def test_the_slurm_profile_places_only_existing_rules():
    placed = yaml.safe_load(SLURM_PROFILE.read_text(encoding="utf-8")).get("set-resources") or {}
    stale = sorted(set(placed) - set(workflow_rules()))
    assert not stale, f"set-resources names rules that do not exist (renamed?): {stale}"


_FIND_TORCH_IMPORTER = """
import importlib, importlib.abc, sys
class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch imported while importing " + sys.argv[1])
sys.meta_path.insert(0, NoTorch())
importlib.import_module(sys.argv[1])
"""


@pytest.mark.parametrize("module", DAG_TIME_MODULES)
def test_dag_time_modules_import_no_torch(module):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    code = f"import sys, {module}; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if proc.stdout.strip() != "False":
        # show who imports it: the same import with torch blocked fails with the import chain
        chain = subprocess.run([sys.executable, "-c", _FIND_TORCH_IMPORTER, module], capture_output=True,
                               text=True, cwd=REPO, env=env, timeout=120)
        pytest.fail(f"importing {module} imports torch:\n{chain.stderr[-3000:]}")


def test_models_and_evaluation_never_import_training_or_methods():
    """The lower floors (model access, evaluation) stay below the training routine and the methods."""
    import re

    for folder in ("models", "evaluation", "scenarios"):
        for path in (REPO / "workflow_scripts" / folder).glob("*.py"):
            text = path.read_text(encoding="utf-8")
            bad = re.findall(r"from workflow_scripts\.(training|methods\.finetune|methods\.run|reports)\b", text)
            if folder == "scenarios":
                bad = [b for b in bad]
            assert not bad, f"{path.name} imports workflow_scripts.{bad[0]}"


def test_the_training_routine_never_names_a_method():
    from workflow_scripts.methods.registry import METHODS

    text = (REPO / "workflow_scripts" / "training" / "train.py").read_text(encoding="utf-8")
    code = "\n".join(line.split("#")[0] for line in text.splitlines())
    for name in METHODS:
        assert f'"{name}"' not in code and f"'{name}'" not in code, name
