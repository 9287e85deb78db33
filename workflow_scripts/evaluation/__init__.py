"""Evaluation: the one exact-match metric, the metric registry and the evaluator every method is scored by."""

from workflow_scripts.evaluation.exact_match import accuracy, score_targets

__all__ = ["accuracy", "score_targets"]
