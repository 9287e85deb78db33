"""Stubborn: continual knowledge updates in language models, as plain tested functions.

Every Snakemake rule calls one function of this package; every function can also run outside
Snakemake (see ``workflow_scripts/steps``).
"""

__version__ = "0.1.0"
