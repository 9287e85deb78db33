"""Intervals and paired tests for accuracies (pure functions, no torch).

- :func:`wilson`: the 95 % Wilson score interval of k successes in n trials (well-behaved at 0 and n,
  unlike the normal approximation);
- :func:`mcnemar_exact`: the exact (binomial) McNemar test of two methods scored on the same items;
- :func:`paired_bootstrap`: a percentile interval and two-sided p-value for a mean paired difference,
  resampling whole clusters (folds) and items within them.
"""

from __future__ import annotations

import math
import random
from typing import Sequence

Z95 = 1.959963984540054


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """(low, high) of the Wilson score interval; (nan, nan) when n == 0."""
    if n == 0:
        return float("nan"), float("nan")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be between 0 and n={n}, got {successes}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def _binom_cdf(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2), exactly."""
    return sum(math.comb(n, i) for i in range(k + 1)) / 2**n


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> dict:
    """Exact McNemar test on paired outcomes (item i scored by both methods).

    Returns the discordant counts ``only_a`` (a right, b wrong) and ``only_b``, and the two-sided
    p-value 2 * P(X <= min) for X ~ Binomial(only_a + only_b, 1/2), capped at 1 (1.0 with no
    discordant pairs)."""
    if len(a) != len(b):
        raise ValueError(f"paired outcomes need equal lengths, got {len(a)} and {len(b)}")
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    n = only_a + only_b
    p = 1.0 if n == 0 else min(1.0, 2 * _binom_cdf(min(only_a, only_b), n))
    return {"only_a": only_a, "only_b": only_b, "n": len(a), "p_value": p}


def paired_bootstrap(diffs_by_cluster: Sequence[Sequence[float]], reps: int = 2000, seed: int = 0) -> dict:
    """Mean paired difference with a 95 % percentile interval and a two-sided bootstrap p-value.

    ``diffs_by_cluster``: per cluster (fold), the per-item differences (a - b). Each replicate draws
    clusters with replacement, then items within each drawn cluster with replacement."""
    clusters = [list(c) for c in diffs_by_cluster if len(c)]
    if not clusters:
        return {"mean": float("nan"), "low": float("nan"), "high": float("nan"), "p_value": float("nan")}
    flat = [d for c in clusters for d in c]
    mean = sum(flat) / len(flat)
    rng = random.Random(seed)
    means = []
    for _ in range(reps):
        sample = []
        for c in (rng.choice(clusters) for _ in clusters):
            sample.extend(rng.choice(c) for _ in c)
        means.append(sum(sample) / len(sample))
    means.sort()
    low, high = means[int(0.025 * reps)], means[min(reps - 1, int(0.975 * reps))]
    below = sum(1 for m in means if m <= 0) / reps
    above = sum(1 for m in means if m >= 0) / reps
    return {"mean": mean, "low": low, "high": high, "p_value": min(1.0, 2 * min(below, above))}
