"""Stubborn: continual knowledge updates in language models, as plain tested functions.

Every Snakemake rule calls one function of this package; every function can also run outside
Snakemake (see ``workflow_scripts/steps``).
"""

import os

# Large CPU tensors on transparent huge pages: 512 times fewer page faults when a training run first
# touches its gradients, optimiser state and activations (a training run of SmolLM2 is ~8 % faster).
# torch reads this once, at its first allocation, so it only takes effect when this package is
# imported before torch (as every rule script and benchmark does); otherwise it changes nothing.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__version__ = "0.1.0"
