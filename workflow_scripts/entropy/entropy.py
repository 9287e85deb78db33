"""Knowledge entropy from average feed-forward coefficients, with paired bootstrap CIs.

Per layer l, with c̄ the dataset's average |coefficient| of each of its m neurons
(:mod:`workflow_scripts.entropy.coefficients`):

    p_i = c̄_i / Σ_j c̄_j              (L1 normalisation)
    H_l = −Σ_i p_i ln p_i            (natural log; 0 · ln 0 = 0)
    H_norm,l = H_l / ln m            (in [0, 1])
    knowledge entropy = Σ_l H_l      (a sum over layers)

It is the entropy of the *dataset-averaged* coefficient vector, not an average of per-token
entropies. High H: the model spreads its coefficients evenly; low H: a few neurons dominate.

CIs come from a bootstrap over sequences: resample the sequences with replacement, recompute c̄ and
H from the resampled per-sequence values, and take percentiles. ΔH between two checkpoints scored on
the same texts uses the *same* resampled sequences for both (paired), so identical checkpoints give
ΔH = 0 with a zero-width interval.

Caveat: H of a resampled mean is biased low (a resample holds fewer distinct sequences, so its c̄ is
less averaged and less even), so a checkpoint's percentile interval can sit mostly below its point
estimate, more so with few texts. The bias is nearly the same for two checkpoints on the same
resamples, so it largely cancels in the paired ΔH, the comparison the intervals are meant for.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from workflow_scripts.entropy.coefficients import SequenceCoefficients, sequence_coefficients

__all__ = ["Interval", "EntropyResult", "entropy_from_cbar", "normalised_entropy", "total_entropy",
           "bootstrap_total", "bootstrap_delta", "bootstrap_after_and_delta", "layer_table", "entropy_table"]

_BOOT_CHUNK = 64  # bootstrap replicates formed at once (bounds memory to chunk × layers × m floats)


@dataclass(frozen=True)
class Interval:
    """A point estimate with a percentile bootstrap interval."""

    estimate: float
    low: float
    high: float
    level: float
    n_boot: int
    seed: int

    def as_dict(self) -> dict:
        return asdict(self)


def entropy_from_cbar(cbar: torch.Tensor | np.ndarray | Sequence) -> torch.Tensor:
    """Per-layer entropy (natural log) of the L1-normalised average coefficients.

    ``cbar`` is (..., n_layers, m): the last axis holds one layer's non-negative average |c| per
    neuron; the result is (..., n_layers) float64. A neuron with c̄_i = 0 contributes 0 (0 · ln 0 = 0).

    This is the seed's normalisation and entropy (``p = c̄ / Σ c̄``, ``−Σ p ln p``; the seed adds 1e-9
    inside the log, which only moves H by about 1e-9 per neuron). It fixes the seed's c̄ (spec B.4.1):
    the seed summed |c| over every position, padding included, and divided by the number of
    sequences; c̄ here is expected to be the mean over sequences of each sequence's mean over its real
    tokens (:func:`~workflow_scripts.entropy.coefficients.sequence_coefficients`, ``mode="paper"``).

    Raises ValueError for negative or non-finite values, or a layer whose coefficients sum to zero.
    """
    c = torch.as_tensor(cbar, dtype=torch.float64)
    if c.dim() < 2:
        raise ValueError(f"cbar must be (..., n_layers, m), got shape {tuple(c.shape)}")
    if not torch.isfinite(c).all():
        raise ValueError("cbar has non-finite values")
    if (c < 0).any():
        raise ValueError("cbar has negative values (expected averages of |coefficient|)")
    total = c.sum(dim=-1, keepdim=True)
    if (total == 0).any():
        raise ValueError("a layer's coefficients sum to zero: its entropy is undefined")
    p = c / total
    return -torch.special.xlogy(p, p).sum(dim=-1)


def normalised_entropy(entropy: torch.Tensor, width: int) -> torch.Tensor:
    """H / ln m: 1 for a uniform layer, 0 when one neuron carries everything."""
    if width < 2:
        raise ValueError(f"need at least 2 neurons per layer to normalise, got {width}")
    return torch.as_tensor(entropy, dtype=torch.float64) / math.log(width)


def total_entropy(cbar: torch.Tensor | np.ndarray | Sequence) -> float:
    """Knowledge entropy: the sum over layers of :func:`entropy_from_cbar`."""
    return float(entropy_from_cbar(cbar).sum(dim=-1))


def _check_level(level: float, n_boot: int) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be positive, got {n_boot}")


def _values(x: SequenceCoefficients | torch.Tensor) -> torch.Tensor:
    values = x.values if isinstance(x, SequenceCoefficients) else torch.as_tensor(x)
    values = values.to(torch.float64)
    if values.dim() != 3 or values.shape[0] < 1:
        raise ValueError(f"per-sequence values must be (n_sequences, n_layers, m), got {tuple(values.shape)}")
    return values


def _resample_counts(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n): how often each sequence is drawn in each replicate (n draws with replacement)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot)


def _replicate_totals(values: torch.Tensor, counts: np.ndarray) -> np.ndarray:
    """Total entropy of each replicate's c̄ (the count-weighted mean of the per-sequence values)."""
    n, layers, m = values.shape
    flat = values.reshape(n, layers * m)
    out = []
    for start in range(0, len(counts), _BOOT_CHUNK):
        weights = torch.as_tensor(counts[start : start + _BOOT_CHUNK], dtype=torch.float64) / n
        cbar = (weights @ flat).reshape(-1, layers, m)
        out.append(entropy_from_cbar(cbar).sum(dim=-1).numpy())
    return np.concatenate(out)


def _interval(estimate: float, replicates: np.ndarray, level: float, n_boot: int, seed: int) -> Interval:
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(replicates, [alpha, 1.0 - alpha])
    return Interval(float(estimate), float(low), float(high), float(level), int(n_boot), int(seed))


def bootstrap_total(coefficients: SequenceCoefficients | torch.Tensor, *, n_boot: int = 1000,
                    level: float = 0.95, seed: int = 0) -> Interval:
    """A checkpoint's total entropy with a percentile bootstrap CI over its sequences (seeded)."""
    _check_level(level, n_boot)
    values = _values(coefficients)
    counts = _resample_counts(values.shape[0], n_boot, seed)
    estimate = total_entropy(values.mean(dim=0))
    return _interval(estimate, _replicate_totals(values, counts), level, n_boot, seed)


def _paired(before, after) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-sequence values of two checkpoints, checked to come from the same texts, tokens and mode."""
    a, b = _values(before), _values(after)
    if a.shape != b.shape:
        raise ValueError(f"the checkpoints were not scored on the same texts: shapes {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    if isinstance(before, SequenceCoefficients) and isinstance(after, SequenceCoefficients):
        if not torch.equal(before.n_tokens, after.n_tokens) or before.mode != after.mode:
            raise ValueError("the checkpoints were not scored on the same tokens with the same mode")
    return a, b


def bootstrap_delta(before: SequenceCoefficients | torch.Tensor, after: SequenceCoefficients | torch.Tensor,
                    *, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> Interval:
    """ΔH = H(after) − H(before) for two checkpoints scored on the same texts, in the same order, with
    a paired percentile bootstrap CI: every replicate resamples the same sequences for both."""
    _check_level(level, n_boot)
    a, b = _paired(before, after)
    counts = _resample_counts(a.shape[0], n_boot, seed)
    estimate = total_entropy(b.mean(dim=0)) - total_entropy(a.mean(dim=0))
    replicates = _replicate_totals(b, counts) - _replicate_totals(a, counts)
    return _interval(estimate, replicates, level, n_boot, seed)


def bootstrap_after_and_delta(before: SequenceCoefficients | torch.Tensor,
                              after: SequenceCoefficients | torch.Tensor, *, n_boot: int = 1000,
                              level: float = 0.95, seed: int = 0) -> tuple[Interval, Interval]:
    """(:func:`bootstrap_total` of ``after``, :func:`bootstrap_delta` of ``before`` → ``after``), equal to the
    two calls with the same seed, but resampling ``after``'s entropy once for both."""
    _check_level(level, n_boot)
    a, b = _paired(before, after)
    counts = _resample_counts(a.shape[0], n_boot, seed)
    reps_a, reps_b = _replicate_totals(a, counts), _replicate_totals(b, counts)
    h_a, h_b = total_entropy(a.mean(dim=0)), total_entropy(b.mean(dim=0))
    return (_interval(h_b, reps_b, level, n_boot, seed), _interval(h_b - h_a, reps_b - reps_a, level, n_boot, seed))


def layer_table(coefficients: SequenceCoefficients) -> pd.DataFrame:
    """One row per layer: ``layer``, ``module``, ``width`` (m), ``H``, ``H_norm`` (H / ln m) and
    ``n_tokens`` (real tokens measured)."""
    h = entropy_from_cbar(coefficients.cbar())
    return pd.DataFrame({
        "layer": pd.Series(range(coefficients.n_layers), dtype="int64"),
        "module": pd.Series(list(coefficients.modules), dtype=object),
        "width": pd.Series([coefficients.width] * coefficients.n_layers, dtype="int64"),
        "H": pd.Series(h.numpy(), dtype="float64"),
        "H_norm": pd.Series(normalised_entropy(h, coefficients.width).numpy(), dtype="float64"),
        "n_tokens": pd.Series([int(coefficients.n_tokens.sum())] * coefficients.n_layers, dtype="int64"),
    })


@dataclass(frozen=True)
class EntropyResult:
    """A checkpoint's entropy: the per-layer table, the total with its CI, and the per-sequence
    coefficients it came from (keep them to compare checkpoints with :func:`bootstrap_delta`)."""

    table: pd.DataFrame
    total: Interval
    coefficients: SequenceCoefficients


def entropy_table(model: nn.Module, tokenizer, texts: Sequence[str], *, mode: str = "paper",
                  batch_size: int = 8, max_length: int | None = None, n_boot: int = 1000,
                  level: float = 0.95, seed: int = 0) -> EntropyResult:
    """Measure a model's coefficients on ``texts`` and tabulate its knowledge entropy per layer, plus
    the total (the sum of ``H``) with a seeded bootstrap CI over the texts."""
    coefficients = sequence_coefficients(model, tokenizer, texts, mode=mode, batch_size=batch_size,
                                         max_length=max_length)
    return EntropyResult(layer_table(coefficients), bootstrap_total(coefficients, n_boot=n_boot, level=level,
                                                                    seed=seed), coefficients)
