"""Timers and adaptive sampling: how long one call of a callable takes, with its noise.

A timer turns one call into one duration in seconds. `CpuTimer` reads a wall clock (perf_counter by
default; tests inject a fake one). `CudaTimer` records CUDA events around the call, so it measures
the GPU timeline, and optionally flushes L2 first for cold timings.

`measure` warms up, then samples until the ~95% confidence interval of the median is narrow enough
relative to the median, a wall-clock budget ends, or max_samples is reached. Every raw sample is kept.

The confidence interval is the distribution-free order-statistic interval of the median: with n
sorted samples x_(1) <= ... <= x_(n), [x_(j), x_(n+1-j)] covers the true median with probability
1 - 2 P(B <= j-1), B ~ Binomial(n, 1/2). We take the largest j that keeps coverage >= 95% (exact
binomial for n <= 100, normal approximation with continuity correction above). It assumes
independent samples and nothing about their distribution, which suits skewed timing data.
With n < 6 no such j exists: rel_ci = inf.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import math
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Protocol

import torch

DEFAULT_FLUSH_BYTES = 256 * 2**20


class Timer(Protocol):
    mode: str

    def time(self, fn: Callable[[], object]) -> float: ...


class CpuTimer:
    """Wall time of fn() on the host. Torch CPU ops are synchronous, so no sync is needed."""

    mode = "cpu"

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock

    def time(self, fn: Callable[[], object]) -> float:
        t0 = self.clock()
        fn()
        return self.clock() - t0


class CudaTimer:
    """GPU time of fn() between two CUDA events on the current stream.

    Events measure the device timeline: kernel time plus any gap where the GPU waited for the host
    to launch work, which is part of what a small MoE layer really costs. `end.synchronize()` waits
    for the GPU before the host reads the elapsed time.

    l2_flush=True gives cold timings: before each sample we write a buffer larger than L2 (2x the
    L2 size the device reports, 256 MiB if it reports none). Otherwise weights touched by the previous
    sample are still in L2 (50 MiB on an H100) and a small layer looks faster than it is inside a
    model, where other layers evict them (triton's do_bench does the same). The flush kernel is
    enqueued before the start event, so the event pair excludes it.
    """

    def __init__(self, l2_flush: bool = False, device: str | torch.device | None = None,
                 flush_bytes: int | None = None):
        self.device = torch.device(device if device is not None else "cuda")
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.l2_flush = l2_flush
        self.mode = "cuda-cold" if l2_flush else "cuda-warm"
        self._flush_buf = None
        if l2_flush:
            if flush_bytes is None:
                l2 = getattr(torch.cuda.get_device_properties(self.device), "L2_cache_size", 0)
                flush_bytes = 2 * l2 if l2 else DEFAULT_FLUSH_BYTES
            self._flush_buf = torch.empty(flush_bytes, dtype=torch.int8, device=self.device)
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)

    def time(self, fn: Callable[[], object]) -> float:
        with torch.cuda.device(self.device):
            if self._flush_buf is not None:
                self._flush_buf.zero_()  # a write evicts L2 lines; a read could hit in L2 itself
            self._start.record()
            fn()
            self._end.record()
            self._end.synchronize()
            return self._start.elapsed_time(self._end) * 1e-3  # elapsed_time is in ms


def make_timer(device: str | torch.device, l2_flush: bool = False) -> Timer:
    """The timer for a device: CpuTimer on CPU, CudaTimer on CUDA."""
    if torch.device(device).type == "cuda":
        return CudaTimer(l2_flush=l2_flush, device=device)
    return CpuTimer()


@contextlib.contextmanager
def fixed_threads(n: int) -> Iterator[int]:
    """Run the block with torch.set_num_threads(n); restore the previous count afterwards."""
    if n < 1:
        raise ValueError(f"threads={n} is invalid: must be >= 1")
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(previous)


def quantile(sorted_xs: list[float], q: float) -> float:
    """Linear-interpolation quantile of sorted data (numpy's default, Hyndman-Fan type 7)."""
    pos = q * (len(sorted_xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (pos - lo) * (sorted_xs[hi] - sorted_xs[lo])


@functools.lru_cache(maxsize=4096)
def median_ci_ranks(n: int, confidence: float = 0.95) -> tuple[int, int] | None:
    """0-based indices (lo, hi) into n sorted samples bounding a CI of the median; None if n is too small."""
    alpha = 1 - confidence
    if n <= 100:
        # largest j (1-based) with 2 * P(B <= j-1) <= alpha, B ~ Binomial(n, 1/2)
        j, cdf = 0, 0.0
        while j < n // 2:
            cdf += math.comb(n, j) / 2**n  # now P(B <= j)
            if 2 * cdf > alpha:
                break
            j += 1
        return (j - 1, n - j) if j >= 1 else None
    # P(B <= j-1) ~ Phi((j - 1/2 - n/2) / (sqrt(n)/2)) with continuity correction; largest j with that <= alpha/2
    z = statistics.NormalDist().inv_cdf(1 - alpha / 2)
    j = math.floor(n / 2 + 0.5 - z * math.sqrt(n) / 2)
    return (j - 1, n - j)


@dataclass
class Samples:
    """Every raw sample (seconds, in measurement order) and summaries of them."""

    raw: list[float]
    stopped_because: str  # "converged" | "budget" | "max_samples"
    warmup: int
    threads: int
    timer: str
    n: int = field(init=False)
    median: float = field(init=False)
    p10: float = field(init=False)
    p25: float = field(init=False)
    p75: float = field(init=False)
    p90: float = field(init=False)
    min: float = field(init=False)
    mean: float = field(init=False)
    stdev: float = field(init=False)
    ci_low: float = field(init=False)  # ~95% CI of the median (order statistics; nan when n < 6)
    ci_high: float = field(init=False)
    rel_ci: float = field(init=False)  # CI half-width / median; inf when n < 6

    def __post_init__(self):
        if not self.raw:
            raise ValueError("Samples.raw is empty: at least one sample is needed")
        xs = sorted(self.raw)
        self.n = len(xs)
        self.median = quantile(xs, 0.5)
        self.p10, self.p25, self.p75, self.p90 = (quantile(xs, q) for q in (0.10, 0.25, 0.75, 0.90))
        self.min = xs[0]
        self.mean = statistics.fmean(xs)
        self.stdev = statistics.stdev(xs) if self.n > 1 else 0.0
        self.ci_low, self.ci_high, self.rel_ci = _median_ci(xs)

    def to_dict(self) -> dict:
        return asdict(self)


def _median_ci(sorted_xs: list[float]) -> tuple[float, float, float]:
    ranks = median_ci_ranks(len(sorted_xs))
    if ranks is None:
        return math.nan, math.nan, math.inf
    lo, hi = sorted_xs[ranks[0]], sorted_xs[ranks[1]]
    median = quantile(sorted_xs, 0.5)
    rel = (hi - lo) / 2 / median if median > 0 else math.inf
    return lo, hi, rel


def measure(fn: Callable[[], object], timer: Timer, *, warmup: int = 3, min_samples: int = 10,
            max_samples: int = 1000, budget_s: float = 2.0, rel_ci_target: float = 0.02,
            setup: Callable[[], object] | None = None,
            clock: Callable[[], float] = time.perf_counter) -> Samples:
    """Warm up, then time fn() until the median is known to rel_ci_target, the budget ends, or max_samples.

    setup() runs before every call (warmup included), outside the timed region; its return value is
    ignored, so share inputs with fn through a closure. The budget is wall time on `clock` from entry,
    warmup included. min_samples are always taken, even past the budget, so every result has a CI;
    the stop reason says which rule ended sampling (convergence is checked first).
    """
    if not 1 <= min_samples <= max_samples:
        raise ValueError(f"min_samples={min_samples}, max_samples={max_samples}: need 1 <= min_samples <= max_samples")
    if warmup < 0 or budget_s < 0 or rel_ci_target <= 0:
        raise ValueError(f"warmup={warmup}, budget_s={budget_s}, rel_ci_target={rel_ci_target}: "
                         "need warmup >= 0, budget_s >= 0, rel_ci_target > 0")
    t_start = clock()
    for _ in range(warmup):  # first calls pay for allocator growth, lazy init, autotuning, cold caches
        if setup is not None:
            setup()
        timer.time(fn)
    raw: list[float] = []
    sorted_raw: list[float] = []
    while True:
        if setup is not None:
            setup()
        t = timer.time(fn)
        raw.append(t)
        bisect.insort(sorted_raw, t)
        n = len(raw)
        if n < min_samples:
            continue
        if _median_ci(sorted_raw)[2] <= rel_ci_target:
            stopped = "converged"
        elif n >= max_samples:
            stopped = "max_samples"
        elif clock() - t_start >= budget_s:
            stopped = "budget"
        else:
            continue
        return Samples(raw=raw, stopped_because=stopped, warmup=warmup,
                       threads=torch.get_num_threads(), timer=timer.mode)
