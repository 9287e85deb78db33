"""Importing this module registers every method (torch-free: the heavy code is imported in ``apply``)."""

from workflow_scripts.methods import editing, finetune, merging  # noqa: F401
from workflow_scripts.methods.base import METHODS

__all__ = ["METHODS"]
