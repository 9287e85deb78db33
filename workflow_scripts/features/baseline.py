"""One-feature baselines of a probe text, next to the internal-feature classifiers:

- ``logprob``: the teacher-forced log-probability of the target given the prompt, summed over the
  target's tokens (the target tokens found by the shared encoding, as exact match finds them);
- ``tokens``: the number of tokens of the probe text (special tokens the tokenizer adds included).

If either alone separates the classes as well as the internal features do, the internal features
add nothing that the output or the text length does not already say.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

BASELINES = ("logprob", "tokens")


def baseline_feature_names() -> pd.DataFrame:
    """One row per baseline feature column, in the order of :func:`baseline_features`."""
    return pd.DataFrame({"baseline": list(BASELINES)})


def target_logprob(model, tokenizer, prompts: Sequence[str], targets: Sequence[str], batch_size: int = 32,
                   progress: bool = False) -> np.ndarray:
    """Summed teacher-forced log-probability of each target after its prompt (float64)."""
    from workflow_scripts.evaluation.exact_match import score_targets

    scores = score_targets(model, tokenizer, prompts, targets, batch_size=batch_size, progress=progress)
    return (scores.mean_logprob * scores.n_target_tokens).to_numpy(np.float64)


def token_counts(tokenizer, texts: Sequence[str]) -> np.ndarray:
    """Tokens of each text as the model sees it."""
    return np.array([len(tokenizer(t)["input_ids"]) for t in texts], dtype=np.float64)


def baseline_features(model, tokenizer, prompts: Sequence[str], targets: Sequence[str], texts: Sequence[str],
                      batch_size: int = 32, progress: bool = False) -> np.ndarray:
    """(texts, baselines) float32, columns as in :func:`baseline_feature_names`."""
    if not len(prompts) == len(targets) == len(texts):
        raise ValueError(f"{len(prompts)} prompts, {len(targets)} targets, {len(texts)} texts")
    columns = {"logprob": target_logprob(model, tokenizer, prompts, targets, batch_size, progress),
               "tokens": token_counts(tokenizer, texts)}
    return np.stack([columns[name] for name in BASELINES], axis=1).astype(np.float32)
