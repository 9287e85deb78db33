"""Shared start-up for rule scripts: logging to the rule's log, threads, and a CLI fallback."""

from __future__ import annotations

import argparse
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
        threads=args.threads, log=[args.log] if args.log else [],
    )


def run_step(main: Callable, snakemake=None) -> None:
    """Call ``main(input, output, params, threads)`` with Snakemake's objects or the CLI's."""
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
    main(job.input, job.output, job.params, job.threads)
