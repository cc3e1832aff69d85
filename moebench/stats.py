"""Statistics for comparing two sets of timing samples: a ratio of medians with its confidence
interval, and a rank test of whether the two sets differ at all.

Timing samples are skewed (a floor set by the hardware, a long tail of interruptions), so nothing
here assumes normality:

- `ratio_ci` is a percentile bootstrap of median(candidate) / median(baseline): resample each set
  with replacement (independently, seeded, so the same inputs always give the same interval), take
  the ratio of the two resampled medians, and read the (1-c)/2 and (1+c)/2 quantiles of those
  ratios. `groups` makes it a stratified bootstrap: samples are resampled within their own group
  (a round of an A/B run), so every resample keeps each round's share of the data.
- `mann_whitney` is the Mann-Whitney U test (Wilcoxon rank-sum), two-sided. U counts the pairs
  (x_i, y_j) with x_i > y_j (ties count 1/2). Without ties and for small sets the p-value is exact:
  the null distribution of U is the coefficients of the Gaussian binomial [n1+n2 choose n1]_q,
  computed below. Otherwise it is the normal approximation with the tie-corrected variance
  sigma^2 = n1 n2 / 12 * ((n + 1) - sum(t^3 - t) / (n (n - 1))) and a continuity correction of 1/2,
  the same choices as scipy.stats.mannwhitneyu(method="asymptotic").

scipy is not a dependency; these are small enough to own and are tested against hand-computed values.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

EXACT_MAX_PAIRS = 10_000  # exact U distribution when n1 * n2 is at most this and there are no ties


def median(xs: Sequence[float]) -> float:
    if len(xs) == 0:
        raise ValueError("median of an empty sample")
    return float(np.median(np.asarray(xs, dtype=float)))


def ratio_ci(baseline: Sequence[float], candidate: Sequence[float], confidence: float = 0.95,
             n_boot: int = 2000, seed: int = 0, baseline_groups: Sequence[int] | None = None,
             candidate_groups: Sequence[int] | None = None) -> tuple[float, float]:
    """Percentile-bootstrap CI of median(candidate) / median(baseline) (see the module docstring)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence}: must be in (0, 1)")
    rng = np.random.default_rng(seed)
    base = _boot_medians(np.asarray(baseline, dtype=float), baseline_groups, n_boot, rng)
    cand = _boot_medians(np.asarray(candidate, dtype=float), candidate_groups, n_boot, rng)
    ratios = cand / base
    tail = (1 - confidence) / 2
    return float(np.quantile(ratios, tail)), float(np.quantile(ratios, 1 - tail))


def _boot_medians(xs: np.ndarray, groups: Sequence[int] | None, n_boot: int, rng) -> np.ndarray:
    """n_boot medians of resamples of xs; with groups, each group is resampled to its own size."""
    if xs.size == 0:
        raise ValueError("bootstrap of an empty sample")
    if groups is None:
        return np.median(xs[rng.integers(0, xs.size, (n_boot, xs.size))], axis=1)
    labels = np.asarray(groups)
    if labels.shape != xs.shape:
        raise ValueError(f"groups has {labels.size} labels for {xs.size} samples")
    parts = []
    for g in np.unique(labels):
        members = xs[labels == g]
        parts.append(members[rng.integers(0, members.size, (n_boot, members.size))])
    return np.median(np.concatenate(parts, axis=1), axis=1)


@dataclass(frozen=True)
class RankTest:
    u: float  # U of the first sample: pairs (x_i, y_j) with x_i > y_j, ties counted 1/2
    p_value: float  # two-sided
    method: str  # "exact" | "normal"


def mann_whitney(x: Sequence[float], y: Sequence[float]) -> RankTest:
    """Two-sided Mann-Whitney U test of x against y (see the module docstring)."""
    n1, n2 = len(x), len(y)
    if n1 == 0 or n2 == 0:
        raise ValueError(f"Mann-Whitney needs two non-empty samples, got sizes {n1} and {n2}")
    ranks, tie_sizes = _midranks(list(x) + list(y))
    u = sum(ranks[:n1]) - n1 * (n1 + 1) / 2
    mean = n1 * n2 / 2
    if not tie_sizes and n1 * n2 <= EXACT_MAX_PAIRS:
        counts = _u_counts(n1, n2)  # counts[k] = arrangements with U = k
        total = sum(counts)
        k = round(u)
        lower = sum(counts[: k + 1]) / total  # P(U <= u)
        upper = sum(counts[k:]) / total  # P(U >= u)
        return RankTest(u, min(1.0, 2 * min(lower, upper)), "exact")
    n = n1 + n2
    ties = sum(t**3 - t for t in tie_sizes)
    var = n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1)))
    if var <= 0:  # every value equal: no evidence of any difference
        return RankTest(u, 1.0, "normal")
    z = max(abs(u - mean) - 0.5, 0.0) / math.sqrt(var)
    return RankTest(u, min(1.0, 2 * (1 - statistics.NormalDist().cdf(z))), "normal")


def _midranks(values: list[float]) -> tuple[list[float], list[int]]:
    """1-based ranks with ties given the mean of their ranks, and the sizes of the tie groups (>1)."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    tie_sizes = []
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        if j > i:
            tie_sizes.append(j - i + 1)
        i = j + 1
    return ranks, tie_sizes


def _u_counts(n1: int, n2: int) -> list[int]:
    """How many of the C(n1+n2, n1) orderings give U = 0, 1, ..., n1*n2 (no ties).

    They are the coefficients of the Gaussian binomial prod_{i=1..n1} (1 - q^(n2+i)) / (1 - q^i):
    multiply by each numerator factor, then divide by (1 - q^i), which is a running sum with stride i.
    Exact integers throughout.
    """
    size = n1 * n2 + 1
    poly = [0] * size
    poly[0] = 1
    for i in range(1, n1 + 1):
        shift = n2 + i
        for k in range(size - 1, shift - 1, -1):  # times (1 - q^shift), truncated at degree n1*n2
            poly[k] -= poly[k - shift]
        for k in range(i, size):  # divided by (1 - q^i)
            poly[k] += poly[k - i]
    return poly
