"""The one accuracy metric everything is judged by."""

from workflow_scripts.metrics.exact_match import accuracy, encode_pair, score_targets

__all__ = ["accuracy", "encode_pair", "score_targets"]
