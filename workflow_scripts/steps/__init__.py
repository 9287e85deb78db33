"""Rule scripts: each reads ``snakemake.input/output/params``, calls one function, and writes outputs.

Every script also runs outside Snakemake for debugging, e.g.::

    python workflow_scripts/steps/probe_familiarity.py --input model=results/model \\
        --input facts=results/facts/facts.parquet --output table=/tmp/probe.parquet \\
        --param factset=facts --param batch_size=8
"""
