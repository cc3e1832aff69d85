"""Timers and adaptive sampling, driven by a fake clock: every duration is chosen by the test."""

import itertools
import math
import statistics
from fractions import Fraction

import numpy as np
import pytest
import torch

from moebench.measure.timers import CpuTimer, CudaTimer, Samples, fixed_threads, measure, median_ci_ranks, quantile


class FakeClock:
    """Time moves only when the code under test does work: fn() and setup() advance it."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, dt: float) -> None:
        self.now += dt


def work(clock: FakeClock, durations):
    """A callable whose k-th call takes durations[k] seconds of fake time."""
    it = iter(durations)
    return lambda: clock.advance(next(it))


def run(durations, **kw):
    clock = FakeClock()
    kw.setdefault("warmup", 0)
    return measure(work(clock, durations), CpuTimer(clock), clock=clock, **kw), clock


def test_cpu_timer_reads_the_clock_around_the_call():
    clock = FakeClock()
    clock.advance(100.0)
    assert CpuTimer(clock).time(lambda: clock.advance(0.25)) == 0.25


def test_warmup_calls_are_run_but_not_kept():
    durations = [9.0, 8.0, 7.0] + [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    s, _ = run(durations, warmup=3, min_samples=8, max_samples=8, budget_s=1e9)
    assert s.raw == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    assert s.warmup == 3


def test_constant_samples_converge_as_soon_as_a_ci_exists():
    # a 95% order-statistic CI needs n >= 6; with identical samples its width is 0
    s, _ = run(itertools.repeat(1e-3), min_samples=3, rel_ci_target=0.01, budget_s=1e9)
    assert (s.stopped_because, s.n, s.rel_ci) == ("converged", 6, 0.0)


def test_noisy_samples_stop_at_the_budget_with_every_raw_sample_kept():
    durations = itertools.cycle([1.0, 2.0])  # median 1.5, CI [1, 2]: rel_ci 1/3 forever
    s, clock = run(durations, min_samples=3, rel_ci_target=0.01, budget_s=20.0)
    # elapsed after n samples: 1, 3, 4, 6, ..., 19, 21 -> first >= 20 at n = 14
    assert (s.stopped_because, s.n) == ("budget", 14)
    assert s.raw == [1.0, 2.0] * 7
    assert clock.now == 21.0
    assert s.rel_ci == pytest.approx(1 / 3)


def test_budget_counts_warmup_and_setup_but_samples_exclude_setup():
    clock = FakeClock()
    calls = []

    def setup():
        calls.append(clock.now)
        clock.advance(10.0)  # e.g. drawing new routing inputs: untimed but not free

    s = measure(work(clock, itertools.cycle([1.0, 2.0])), CpuTimer(clock), warmup=2, min_samples=3,
                rel_ci_target=0.01, budget_s=40.0, setup=setup, clock=clock)
    # warmup: 11 + 12 = 23; samples add 11, 12, 11: 34, 46, 57 -> n=3 is past the budget
    assert s.raw == [1.0, 2.0, 1.0]
    assert (s.stopped_because, len(calls)) == ("budget", 5)


def test_min_samples_are_taken_even_when_the_budget_is_already_spent():
    s, _ = run(itertools.cycle([1.0, 3.0]), min_samples=5, budget_s=0.0)
    assert (s.n, s.stopped_because) == (5, "budget")


def test_max_samples_caps_an_unconverged_run():
    s, _ = run(itertools.cycle([1.0, 2.0]), min_samples=2, max_samples=8, rel_ci_target=1e-6, budget_s=1e9)
    assert (s.n, s.stopped_because) == (8, "max_samples")


def test_summaries_match_numpy_and_statistics():
    rng = np.random.default_rng(0)
    raw = list(rng.lognormal(-5, 0.5, size=37))
    s = Samples(raw=raw, stopped_because="budget", warmup=0, threads=1, timer="cpu")
    assert s.raw == raw  # measurement order kept, not sorted
    for name, q in [("p10", 10), ("p25", 25), ("median", 50), ("p75", 75), ("p90", 90)]:
        assert getattr(s, name) == pytest.approx(np.percentile(raw, q), rel=1e-12)
    assert s.min == min(raw)
    assert s.mean == pytest.approx(statistics.mean(raw))
    assert s.stdev == pytest.approx(statistics.stdev(raw))
    assert s.to_dict()["n"] == 37


def test_ci_of_six_samples_is_min_to_max():
    # n=6: P(B<=0) = 1/64, coverage 1 - 2/64 = 0.969 >= 0.95; j=2 would cover only 1 - 14/64 = 0.78
    s = Samples(raw=[6.0, 1.0, 5.0, 2.0, 4.0, 3.0], stopped_because="budget", warmup=0, threads=1, timer="cpu")
    assert (s.ci_low, s.ci_high) == (1.0, 6.0)
    assert s.rel_ci == pytest.approx(2.5 / 3.5)


def test_fewer_than_six_samples_have_no_ci():
    s = Samples(raw=[1.0, 2.0, 3.0], stopped_because="budget", warmup=0, threads=1, timer="cpu")
    assert math.isinf(s.rel_ci) and math.isnan(s.ci_low)
    assert s.stdev == statistics.stdev([1.0, 2.0, 3.0])


def coverage(n: int, j: int) -> Fraction:
    """Exact probability that [x_(j), x_(n+1-j)] (1-based) covers the median: 1 - 2 P(B <= j-1)."""
    return 1 - 2 * Fraction(sum(math.comb(n, i) for i in range(j)), 2**n)


@pytest.mark.parametrize("n", [*range(1, 6)])
def test_median_ci_needs_six_samples(n):
    assert median_ci_ranks(n) is None


@pytest.mark.parametrize("n", [6, 7, 10, 25, 50, 99, 100, 101, 150, 400, 1000])
def test_median_ci_ranks_have_about_95_percent_coverage(n):
    lo, hi = median_ci_ranks(n)
    j = lo + 1
    assert hi == n - j  # symmetric
    if n <= 100:  # exact: the narrowest symmetric interval with coverage >= 95%
        assert coverage(n, j) >= Fraction(95, 100) > coverage(n, j + 1)
    else:  # normal approximation: close to 95%
        assert 0.94 <= coverage(n, j) <= 0.97


def test_quantile_endpoints():
    assert quantile([1.0, 2.0, 4.0], 0.0) == 1.0
    assert quantile([1.0, 2.0, 4.0], 1.0) == 4.0
    assert quantile([1.0, 2.0, 4.0], 0.75) == 3.0
    assert quantile([5.0], 0.5) == 5.0


def test_bad_arguments_are_refused():
    timer = CpuTimer()
    with pytest.raises(ValueError, match="min_samples"):
        measure(lambda: None, timer, min_samples=5, max_samples=4)
    with pytest.raises(ValueError, match="rel_ci_target"):
        measure(lambda: None, timer, rel_ci_target=0)
    with pytest.raises(ValueError, match="empty"):
        Samples(raw=[], stopped_because="budget", warmup=0, threads=1, timer="cpu")


def test_fixed_threads_sets_records_and_restores():
    before = torch.get_num_threads()
    with fixed_threads(1):
        s = measure(lambda: None, CpuTimer(), warmup=0, min_samples=2, max_samples=2)
        assert torch.get_num_threads() == 1
    assert s.threads == 1 and s.timer == "cpu"
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads"):
        with fixed_threads(0):
            pass


def test_real_cpu_timing_is_positive_and_ordered():
    s = measure(lambda: torch.ones(1000).sum(), CpuTimer(), warmup=1, min_samples=6, max_samples=50, budget_s=0.2)
    assert s.n == len(s.raw) >= 6 and all(x > 0 for x in s.raw)
    assert s.min <= s.p10 <= s.p25 <= s.median <= s.p75 <= s.p90 <= max(s.raw)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("l2_flush", [False, True])
def test_cuda_timer_measures_gpu_work(l2_flush):
    timer = CudaTimer(l2_flush=l2_flush)
    assert timer.mode == ("cuda-cold" if l2_flush else "cuda-warm")
    x = torch.randn(2048, 2048, device="cuda")
    s = measure(lambda: x @ x, timer, warmup=2, min_samples=6, max_samples=50, budget_s=1.0)
    short = measure(lambda: x[:256, :256] @ x[:256, :256], timer, warmup=2, min_samples=6, max_samples=50,
                    budget_s=1.0)
    assert s.median > short.median > 0
