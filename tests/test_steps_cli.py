"""Jobs outside Snakemake: ``python -m workflow_scripts.steps RULE --wildcards ...`` (the job built by
Snakemake itself, its script run in-process) and the step runner's ``resources`` argument."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from workflow_scripts.steps._runner import _parse_cli, call_main

from conftest import E2E_FACTS, E2E_NOVEL, E2E_SEED, REPO


def steps_cli(workdir: Path, *args: str, snakefile: Path | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "workflow_scripts.steps", *args, "-d", str(workdir)]
    if snakefile is None:
        cmd += ["--configfile", str(workdir / "config.yaml")]
    else:
        cmd += ["-s", str(snakefile)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=workdir)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A working directory with a tiny config (as the end-to-end test's; the model is never loaded)."""
    root = tmp_path_factory.mktemp("steps_cli")
    model = root / "model_stub"
    model.mkdir()
    (model / "config.json").write_text("{}")
    cfg = {
        "model": {"source": str(model)},
        "facts": {"source": "starter", "limit": E2E_FACTS},
        "novel": {"n": E2E_NOVEL, "seed": E2E_SEED},
        "probe": {"batch_size": 8},
        "training": {"lr": 0.003, "batch_size": 8},
        "awareness": {"n_history": 6, "n_finetune": 10, "n_per_class": 6},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    return root


def test_a_rule_and_its_wildcards_resolve_to_the_job_snakemake_would_run(workdir):
    proc = steps_cli(workdir, "probe_familiarity", "--wildcards", "factset=facts", "--dry-run", "--json")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    job = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert job["rule"] == "probe_familiarity" and job["wildcards"] == {"factset": "facts"}
    assert job["input"] == {"model": "results/model", "facts": "results/facts/facts.parquet"}
    assert job["output"] == {"table": "results/probe/facts.parquet"}
    assert job["params"]["factset"] == "facts"
    # the config's probe batch size reaches the job (as a param, or as a resource: a runtime knob)
    assert job["params"].get("batch_size", job["resources"].get("batch_size")) == 8
    assert job["resources"]["gpu"] == 1 and job["threads"] >= 1
    assert list(job["log"].values()) == ["results/logs/probe_familiarity_facts.log"]
    assert Path(job["script"]) == REPO / "workflow_scripts" / "steps" / "probe_familiarity.py"
    assert not (workdir / "results").exists()  # a dry run writes nothing


def test_config_overrides_from_the_command_line_reach_the_params(workdir):
    proc = steps_cli(workdir, "awareness_slices", "--config", 'awareness={"n_history": 5, "n_finetune": 7}',
                     "--dry-run")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "rule awareness_slices:" in proc.stdout
    assert "facts: results/facts/facts.parquet" in proc.stdout
    assert "slices: results/awareness/slices.parquet" in proc.stdout
    assert "sizes: {'H': 5, 'F': 7}" in proc.stdout  # strings from --config became numbers


def test_wildcards_are_checked_against_the_rule(workdir):
    missing = steps_cli(workdir, "probe_familiarity", "--dry-run")
    assert missing.returncode == 1 and "missing: ['factset']" in missing.stderr, missing.stderr[-2000:]
    bad = steps_cli(workdir, "probe_familiarity", "--wildcards", "factset=other", "--dry-run")
    assert bad.returncode == 1 and "wildcard constraints" in bad.stderr, bad.stderr[-2000:]
    unknown = steps_cli(workdir, "no_such_rule", "--dry-run")
    assert unknown.returncode == 1 and "no rule 'no_such_rule'" in unknown.stderr, unknown.stderr[-2000:]


def test_the_script_runs_in_process_with_a_snakemake_object(tmp_path):
    (tmp_path / "in.txt").write_text("hello")
    (tmp_path / "dump.py").write_text(
        "import json, sys\n"
        "json.dump({'input': dict(snakemake.input.items()), 'params': dict(snakemake.params.items()),\n"
        "           'wildcards': dict(snakemake.wildcards.items()), 'threads': snakemake.threads,\n"
        "           'batch_size': snakemake.resources.batch_size, 'log': list(snakemake.log),\n"
        "           'rule': snakemake.rule, 'main': __name__, 'config': snakemake.config},\n"
        "          open(snakemake.output.out, 'w'))\n"
    )
    (tmp_path / "Snakefile").write_text(
        "config.setdefault('greeting', 'hi')\n\n"
        "rule dump:\n"
        "    input: text='in.txt'\n"
        "    output: out='out/{name}.json'\n"
        "    params: name=lambda wc: wc.name.upper(), greeting=config['greeting']\n"
        "    threads: 1\n"
        "    resources: batch_size=4\n"
        "    log: 'logs/{name}.log'\n"
        "    script: 'dump.py'\n"
    )
    proc = steps_cli(tmp_path, "dump", "--wildcards", "name=x", "--resources", "batch_size=16",
                     "--config", "greeting=hello", snakefile=tmp_path / "Snakefile")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "rule dump (name=x):" in proc.stdout
    got = json.loads((tmp_path / "out" / "x.json").read_text())
    assert got == {"input": {"text": "in.txt"}, "params": {"name": "X", "greeting": "hello"},
                   "wildcards": {"name": "x"}, "threads": 1, "batch_size": 16, "log": ["logs/x.log"],
                   "rule": "dump", "main": "__main__", "config": {"greeting": "hello"}}
    assert (tmp_path / "logs").is_dir()  # the log's folder is made, as Snakemake does


# --- the runner's optional fifth argument: resources -----------------------------------------------


def _job(**resources):
    return SimpleNamespace(input="in", output="out", params="params", threads=2,
                           resources=SimpleNamespace(**resources))


def test_main_with_four_arguments_gets_no_resources():
    seen = []
    call_main(lambda input, output, params, threads: seen.append((input, output, params, threads)), _job(batch_size=8))
    assert seen == [("in", "out", "params", 2)]


def test_main_that_takes_resources_gets_them_positionally_or_by_keyword():
    seen = []

    def positional(input, output, params, threads, resources):
        seen.append(resources.batch_size)

    def keyword_only(input, output, params, threads, *, resources=None):
        seen.append(resources.batch_size)

    def variadic(*args):
        seen.append(args[4].batch_size)

    for main in (positional, keyword_only, variadic):
        call_main(main, _job(batch_size=8))
    assert seen == [8, 8, 8]
    without = SimpleNamespace(input="in", output="out", params="params", threads=2)  # no resources at all
    call_main(lambda input, output, params, threads, resources: seen.append(vars(resources)), without)
    assert seen[-1] == {}


def test_command_line_fallback_accepts_resources():
    job = _parse_cli(["--input", "facts=f.parquet", "--param", "seed=3", "--resource", "batch_size=16",
                      "--resource", "partition=gpu", "--threads", "1"])
    assert job.resources.batch_size == 16 and job.resources.partition == "gpu"
    assert job.params.seed == 3 and job.input.facts == "f.parquet" and job.threads == 1
