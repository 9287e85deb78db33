"""Run any job of the workflow outside Snakemake, by rule name and wildcards (for debugging).

The job is built by Snakemake itself: the repository's ``Snakefile`` is loaded with the given
configuration (validated as in a normal run), the rule is looked up, and its input, output, params,
threads, resources and log are resolved for the wildcards exactly as ``snakemake`` would resolve
them. The resolved job is printed; then, unless ``--dry-run``, the rule's Python script runs in this
process with a ``snakemake`` object like the one Snakemake hands to scripts, so breakpoints,
``python -m pdb`` and IDE debuggers work. Nothing is scheduled and no metadata is recorded: the
inputs must already exist (run ``snakemake <input file>`` first), and Snakemake will not consider
the outputs up to date later unless you run ``snakemake --touch``.

Usage (from the directory you run ``snakemake`` in)::

    python -m workflow_scripts.steps RULE [--wildcards NAME=VALUE ...]
        [--configfile FILE ...] [--config KEY=VALUE ...] [-d WORKDIR]
        [--threads N] [--resources NAME=VALUE ...] [--no-log] [--dry-run] [--json]

    # print what probe_familiarity would read, write and get as params for factset=facts
    python -m workflow_scripts.steps probe_familiarity --wildcards factset=facts --dry-run
    # run it under the debugger, with a smaller config and the log on the console
    python -m pdb -m workflow_scripts.steps probe_familiarity --wildcards factset=facts \\
        --configfile my.yaml --config 'probe={"batch_size": 4}' --no-log

``--config`` and ``--configfile`` behave as in ``snakemake`` (the repository's config.yaml is
read first); ``--threads`` and ``--resources`` act like ``--set-threads RULE=N`` and
``--set-resources RULE:NAME=VALUE`` for this rule.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


class JobError(RuntimeError):
    """The job cannot be built or run as asked."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m workflow_scripts.steps",
        description="Build one job of the Stubborn workflow with Snakemake and run its script in-process.",
    )
    parser.add_argument("rule", help="rule name, e.g. probe_familiarity")
    parser.add_argument("--wildcards", "-w", nargs="*", default=[], metavar="NAME=VALUE")
    parser.add_argument("--configfile", "--configfiles", nargs="*", default=[], metavar="FILE",
                        help="config files overriding the repository's config.yaml (as in snakemake)")
    parser.add_argument("--config", "-C", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides (as in snakemake, e.g. 'training={\"lr\": 1e-4}')")
    parser.add_argument("--directory", "-d", default=None, metavar="DIR",
                        help="working directory (as snakemake -d); relative paths resolve against it")
    parser.add_argument("--snakefile", "-s", default=str(REPO / "Snakefile"))
    parser.add_argument("--threads", type=int, default=None, help="override the rule's threads")
    parser.add_argument("--resources", "--set-resources", nargs="*", default=[], metavar="NAME=VALUE",
                        help="override the rule's resources")
    parser.add_argument("--cores", type=int, default=None,
                        help="cores available (threads are capped by it, as in snakemake; default: all)")
    parser.add_argument("--no-log", action="store_true",
                        help="leave the rule's log file alone and write to the console instead")
    parser.add_argument("--dry-run", "-n", action="store_true", help="print the job, do not run it")
    parser.add_argument("--json", action="store_true", help="print the job as JSON")
    return parser


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise JobError(f"{what}: expected NAME=VALUE, got {item!r}")
        out[name] = value
    return out


def _entries(namedlist) -> list[tuple[str | int, Any]]:
    """(name, value) of a Snakemake Namedlist, unnamed entries by their position."""
    out: list[tuple[str | int, Any]] = []
    position = 0
    for name, value in namedlist._allitems():
        if name is None:
            out.append((position, value))
            position += 1
        else:
            out.append((name, value))
            position += len(value) if isinstance(value, list) else 1
    return out


def _plain(value: Any) -> Any:
    """JSON-friendly copy (paths as strings, Namedlists as lists)."""
    if isinstance(value, str):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return repr(value)


def _script_path(rule, job) -> str | None:
    if rule.script is None:
        return None
    script = rule.script
    if isinstance(script, str) and "{" in script:
        script = script.format(wildcards=job.wildcards, params=job.params)
    if isinstance(script, str) and os.path.isabs(script):
        return script
    source = rule.basedir.join(script) if isinstance(script, str) else script
    return os.path.normpath(str(source.get_path_or_uri(secret_free=True)))


def describe(rule, job, script: str | None) -> dict[str, Any]:
    resources = {k: v for k, v in job.resources.items() if not k.startswith("_")}
    return {
        "rule": rule.name,
        "wildcards": dict(job.wildcards_dict),
        "input": {str(k): _plain(v) for k, v in _entries(job.input)},
        "output": {str(k): _plain(v) for k, v in _entries(job.output)},
        "params": {str(k): _plain(v) for k, v in _entries(job.params)},
        "threads": job.threads,
        "resources": _plain(resources),
        "log": {str(k): _plain(v) for k, v in _entries(job.log)},
        "benchmark": str(job.benchmark) if job.benchmark else None,
        "script": script,
        "workdir": os.getcwd(),
    }


def format_job(info: dict[str, Any]) -> str:
    wildcards = ", ".join(f"{k}={v}" for k, v in info["wildcards"].items())
    lines = [f"rule {info['rule']}" + (f" ({wildcards})" if wildcards else "") + ":"]
    for section in ("input", "output", "params", "resources", "log"):
        if info[section]:
            lines.append(f"  {section}:")
            lines += [f"    {k}: {v!r}" if section == "params" else f"    {k}: {v}"
                      for k, v in info[section].items()]
    lines.append(f"  threads: {info['threads']}")
    for key in ("benchmark", "script", "workdir"):
        if info[key]:
            lines.append(f"  {key}: {info[key]}")
    return "\n".join(lines)


def _check_wildcards(rule, wildcards: dict[str, str]) -> None:
    expected, given = set(rule.wildcard_names), set(wildcards)
    if expected != given:
        missing, extra = sorted(expected - given), sorted(given - expected)
        raise JobError(
            f"rule {rule.name} has wildcards {sorted(expected) or 'none'}"
            + (f"; missing: {missing}" if missing else "") + (f"; not in the rule: {extra}" if extra else "")
            + (" (pass them as --wildcards NAME=VALUE ...)" if missing else ""))
    for pattern in rule.output:
        if not pattern.get_wildcard_names() <= given:
            continue
        path = pattern.apply_wildcards(wildcards)
        if pattern.match(path) is None:
            raise JobError(f"wildcards {wildcards} break the wildcard constraints of rule {rule.name} "
                           f"(its output {pattern} would be {path})")


def _run_script(script: str, rule, job, workflow, no_log: bool) -> None:
    from snakemake.iocontainers import Log, Snakemake

    if not script.endswith(".py"):
        raise JobError(f"rule {rule.name}: only Python scripts can run in-process, not {script}")
    missing = [str(f) for f in job.input if not os.path.exists(f)]
    if missing:
        raise JobError(f"missing input of rule {rule.name}: {missing} (make them first, e.g. "
                       f"`snakemake {missing[0]}`)")
    for path in list(job.output) + list(job.log) + ([job.benchmark] if job.benchmark else []):
        parent = os.path.dirname(str(path))
        if parent:
            os.makedirs(parent, exist_ok=True)
    log = Log() if no_log else job.log
    snakemake = Snakemake(job.input, job.output, job.params, job.wildcards, job.threads, job.resources,
                          log, workflow.config, rule.name, None, os.path.dirname(script))
    sys.argv = [script]
    runpy.run_path(script, init_globals={"snakemake": snakemake}, run_name="__main__")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        wildcards = _pairs(args.wildcards, "--wildcards")
        resources = _pairs(args.resources, "--resources")
    except JobError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    sys.path.insert(0, str(REPO))
    from snakemake.api import SnakemakeApi
    from snakemake.cli import parse_config, parse_set_resources, parse_set_threads
    from snakemake.dag import DAG
    from snakemake.jobs import Job
    from snakemake.settings.types import (
        ConfigSettings,
        DAGSettings,
        OutputSettings,
        ResourceSettings,
    )

    resource_settings = ResourceSettings(
        cores=args.cores or os.cpu_count() or 1,
        overwrite_threads=parse_set_threads([f"{args.rule}={args.threads}"] if args.threads else None),
        overwrite_resources=parse_set_resources([f"{args.rule}:{k}={v}" for k, v in resources.items()] or None),
    )
    config_settings = ConfigSettings(config=parse_config(args.config),
                                     configfiles=[Path(f) for f in args.configfile])
    output_settings = OutputSettings(dryrun=args.dry_run, enable_file_logging=False)
    try:
        with SnakemakeApi(output_settings) as api:
            workflow_api = api.workflow(
                resource_settings=resource_settings, config_settings=config_settings,
                snakefile=Path(args.snakefile).resolve(),
                workdir=Path(args.directory).resolve() if args.directory else None,
            )
            workflow = workflow_api._workflow  # loads the Snakefile (config validated there)
            workflow.dag_settings = DAGSettings()
            if not workflow.is_rule(args.rule):
                known = ", ".join(sorted(r.name for r in workflow.rules))
                raise JobError(f"no rule {args.rule!r}; rules: {known}")
            rule = workflow.get_rule(args.rule)
            _check_wildcards(rule, wildcards)
            job = Job(rule, DAG(workflow, rules=[rule]), wildcards)
            script = _script_path(rule, job)
            info = describe(rule, job, script)
            print(json.dumps(info, indent=2) if args.json else format_job(info), flush=True)
            if args.dry_run:
                return 0
            if script is None:
                raise JobError(f"rule {rule.name} has no script: run it with snakemake")
            _run_script(script, rule, job, workflow, args.no_log)
    except JobError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
