"""stats.py against hand-computed values and a naive enumeration."""

import itertools
import math

import numpy as np
import pytest

from moebench import stats
from moebench.stats import _u_counts, mann_whitney, ratio_ci


def test_u_counts_3_3_by_hand():
    # the 20 orderings of 3 x's among 6: U = 0..9 with counts 1,1,2,3,3,3,3,2,1,1
    assert _u_counts(3, 3) == [1, 1, 2, 3, 3, 3, 3, 2, 1, 1]


@pytest.mark.parametrize("n1,n2", [(1, 4), (3, 5), (4, 4)])
def test_u_counts_match_enumeration(n1, n2):
    counts = [0] * (n1 * n2 + 1)
    for xs in itertools.combinations(range(n1 + n2), n1):  # positions of x among the sorted pool
        ys = [p for p in range(n1 + n2) if p not in xs]
        counts[sum(x > y for x in xs for y in ys)] += 1
    assert _u_counts(n1, n2) == counts
    assert sum(counts) == math.comb(n1 + n2, n1)


def test_exact_p_values_by_hand():
    # x entirely below y: U = 0, P(U <= 0) = 1/20, two-sided 0.1
    t = mann_whitney([1, 2, 3], [4, 5, 6])
    assert (t.u, t.method) == (0.0, "exact") and t.p_value == pytest.approx(0.1)
    # ranks of x = 1, 2, 4: U = 7 - 6 = 1, P(U <= 1) = 2/20, two-sided 0.2
    assert mann_whitney([1, 2, 4], [3, 5, 6]).p_value == pytest.approx(0.2)
    # symmetric: U = 9 is the upper tail, same p
    t = mann_whitney([4, 5, 6], [1, 2, 3])
    assert t.u == 9.0 and t.p_value == pytest.approx(0.1)
    # identical positions in the middle: p = 1
    assert mann_whitney([1, 4], [2, 3]).p_value == pytest.approx(1.0)


def test_normal_approximation_with_ties_by_hand():
    # pool 1 2 2 2 3 3 4 5 -> midranks 1, 3, 3, 3, 5.5, 5.5, 7, 8; R_x = 1+3+3+5.5 = 12.5, U = 12.5 - 10 = 2.5
    # sigma^2 = 16/12 * (9 - ((27-3) + (8-2)) / 56) = 11.285714; z = (|2.5 - 8| - 0.5) / sigma = 1.488352
    t = mann_whitney([1, 2, 2, 3], [2, 3, 4, 5])
    assert t.method == "normal" and t.u == 2.5
    z = 5.0 / math.sqrt(16 / 12 * (9 - 30 / 56))
    assert z == pytest.approx(1.488352, abs=1e-6)
    assert t.p_value == pytest.approx(0.136658, abs=1e-6)


def test_all_equal_is_no_evidence():
    assert mann_whitney([1.0] * 5, [1.0] * 7).p_value == 1.0


def test_mann_whitney_rejects_empty():
    with pytest.raises(ValueError, match="non-empty"):
        mann_whitney([], [1.0])


def test_large_samples_use_normal_and_detect_a_shift():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 0.05, 150), rng.normal(1.1, 0.05, 150)
    t = mann_whitney(b, a)
    assert t.method == "normal" and t.p_value < 1e-10
    same = mann_whitney(rng.normal(1.0, 0.05, 150), rng.normal(1.0, 0.05, 150))
    assert same.p_value > 1e-3


def test_ratio_ci_is_seeded_and_covers_the_ratio():
    rng = np.random.default_rng(1)
    base, cand = rng.normal(1.0, 0.05, 60), rng.normal(1.2, 0.05, 60)
    lo, hi = ratio_ci(base, cand, seed=3)
    assert (lo, hi) == ratio_ci(base, cand, seed=3)
    assert lo < stats.median(cand) / stats.median(base) < hi
    assert 1.1 < lo and hi < 1.3


def test_ratio_ci_of_constant_samples_is_exact():
    # every resample of a constant has the same median: the interval collapses to the ratio
    assert ratio_ci([2.0] * 10, [3.0] * 10) == (pytest.approx(1.5), pytest.approx(1.5))


def test_stratified_bootstrap_keeps_groups():
    # group 0 is all 1.0, group 1 all 3.0, 5 samples each: a stratified resample always has 5 of each,
    # so its median is exactly 2.0 (the mean of the two middle values); unstratified medians vary
    base = [1.0] * 5 + [3.0] * 5
    groups = [0] * 5 + [1] * 5
    lo, hi = ratio_ci(base, [2.0] * 10, baseline_groups=groups, candidate_groups=[0] * 10)
    assert lo == pytest.approx(1.0) and hi == pytest.approx(1.0)
    lo, hi = ratio_ci(base, [2.0] * 10)
    assert lo < 1.0 < hi


def test_ratio_ci_rejects_bad_input():
    with pytest.raises(ValueError, match="confidence"):
        ratio_ci([1.0], [1.0], confidence=1.5)
    with pytest.raises(ValueError, match="labels"):
        ratio_ci([1.0, 2.0], [1.0], baseline_groups=[0])
