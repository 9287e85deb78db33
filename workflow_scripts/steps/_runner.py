"""Shared start-up for rule scripts: logging to the rule's log, threads, and a CLI fallback.

A step's ``main`` takes ``(input, output, params, threads)`` and, optionally, a fifth argument
``resources`` (runtime knobs such as batch sizes of batch-invariant computations, declared under the
rule's ``resources:`` so that changing them never reruns a job). Outside Snakemake::

    python workflow_scripts/steps/probe_familiarity.py --input model=results/model \
        --input facts=results/facts/facts.parquet --output table=/tmp/probe.parquet \
        --param factset=facts --resource batch_size=8   # resources reach a main that takes them
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import sys
from types import SimpleNamespace
from typing import Callable


def _parse_cli(argv: list[str]) -> SimpleNamespace:
    parser = argparse.ArgumentParser(description="Run a Stubborn rule script outside Snakemake.")
    parser.add_argument("--input", action="append", default=[], metavar="NAME=PATH")
    parser.add_argument("--output", action="append", default=[], metavar="NAME=PATH")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=JSON",
                        help="a parameter; the value is parsed as JSON when it can be")
    parser.add_argument("--resource", action="append", default=[], metavar="NAME=VALUE",
                        help="a resource (e.g. batch_size=8); the value is parsed as JSON when it can be")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--log", default=None)
    args = parser.parse_args(argv)

    def pairs(items, parse=False):
        out = {}
        for item in items:
            name, sep, value = item.partition("=")
            if not sep:
                parser.error(f"expected NAME=VALUE, got {item!r}")
            if parse:
                try:
                    value = json.loads(value)
                except json.JSONDecodeError:
                    pass
            out[name] = value
        return SimpleNamespace(**out)

    return SimpleNamespace(
        input=pairs(args.input), output=pairs(args.output), params=pairs(args.param, parse=True),
        resources=pairs(args.resource, parse=True), threads=args.threads,
        log=[args.log] if args.log else [],
    )


def _resources_argument(main: Callable) -> str | None:
    """How ``main`` takes a fifth argument ``resources``: 'positional', 'keyword' or None (it does not)."""
    try:
        signature = inspect.signature(main)
    except (TypeError, ValueError):
        return None
    try:
        signature.bind(None, None, None, None, None)
        return "positional"
    except TypeError:
        pass
    try:
        signature.bind(None, None, None, None, resources=None)
        return "keyword"
    except TypeError:
        return None


def call_main(main: Callable, job) -> None:
    """``main(input, output, params, threads[, resources])``: resources only when ``main`` takes them."""
    args = (job.input, job.output, job.params, job.threads)
    how = _resources_argument(main)
    if how is None:
        main(*args)
        return
    resources = getattr(job, "resources", None)
    if resources is None:
        resources = SimpleNamespace()
    if how == "positional":
        main(*args, resources)
    else:
        main(*args, resources=resources)


def run_step(main: Callable, snakemake=None) -> None:
    """Call ``main(input, output, params, threads[, resources])`` with Snakemake's objects or the CLI's."""
    job = snakemake if snakemake is not None else _parse_cli(sys.argv[1:])
    if job.log:
        stream = open(job.log[0], "a", buffering=1, encoding="utf-8")
        sys.stderr = stream  # progress bars and warnings go to the rule's log too
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, force=True,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    from workflow_scripts.runtime import keep_freed_memory

    keep_freed_memory()
    torch.set_num_threads(max(1, int(job.threads)))
    from threadpoolctl import threadpool_limits

    threadpool_limits(max(1, int(job.threads)))  # numpy's BLAS too (scikit-learn), so side-by-side jobs share the cores
    call_main(main, job)
