"""Machine ceilings: the arithmetic checked exactly with a fixed-duration timer, real runs for plausibility."""

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from moebench.measure.ceilings import copy_bandwidth, copy_samples, expert_gemm_samples, gemm_ceiling, gemm_samples


class FixedTimer:
    """Runs the work for real but reports a fixed duration, so the FLOP and byte counts are exact."""

    mode = "fixed"

    def __init__(self, seconds):
        self.seconds, self.calls = seconds, 0

    def time(self, fn):
        fn()
        self.calls += 1
        return self.seconds


QUICK = dict(warmup=1, min_samples=6, max_samples=30, budget_s=0.3)


def test_gemm_ceiling_counts_two_flops_per_multiply_add():
    timer = FixedTimer(0.5)
    assert gemm_ceiling(8, 16, 32, timer=timer, **QUICK) == 2 * 8 * 16 * 32 / 0.5
    assert timer.calls == 7  # constant samples converge at n = 6, after 1 warmup


def test_copy_bandwidth_counts_read_plus_write():
    assert copy_bandwidth(1000, timer=FixedTimer(1e-3), **QUICK) == 2 * 1000 / 1e-3


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", torch.float32])
def test_real_gemm_ceiling_is_plausible(dtype):
    flops = gemm_ceiling(128, 128, 128, dtype, "cpu", **QUICK)
    assert math.isfinite(flops) and flops > 0


def test_real_copy_bandwidth_is_plausible():
    bw = copy_bandwidth(4 * 2**20, "cpu", **QUICK)
    assert math.isfinite(bw) and bw > 0


def test_samples_are_returned_for_the_record():
    s = gemm_samples(64, 64, 64, **QUICK)
    assert s.n >= 6 and s.timer == "cpu" and len(s.raw) == s.n
    assert copy_samples(1024, **QUICK).median > 0


class FlopCountingTimer(FixedTimer):
    """A FixedTimer that counts the FLOPs of every timed call."""

    def __init__(self, seconds):
        super().__init__(seconds)
        self.flops = []

    def time(self, fn):
        with FlopCounterMode(display=False) as counter:
            fn()
        self.flops.append(counter.get_total_flops())
        self.calls += 1
        return self.seconds


def test_expert_gemm_samples_runs_each_experts_gemm_pair_once_per_sample():
    """Rows [3, 0, 5]: 8 rows through [D, I] and [F, D]; an empty expert runs nothing. Both weight
    layouts are timed (one measure() each), every call does the same GEMMs."""
    D, I, Fh = 16, 48, 24
    timer = FlopCountingTimer(0.25)
    s = expert_gemm_samples([3, 0, 5], D, I, Fh, timer=timer, **QUICK)
    assert s.median == 0.25 and timer.calls == 2 * 7
    assert set(timer.flops) == {2 * 8 * (D * I + Fh * D)}


def test_real_expert_gemm_samples_and_bad_counts():
    assert expert_gemm_samples([64, 1, 0, 30], 32, 64, 32, "bfloat16", **QUICK).median > 0
    with pytest.raises(ValueError, match="rows_per_expert"):
        expert_gemm_samples([4, -1], 8, 8, 8)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="dtype"):
        gemm_ceiling(8, 8, 8, "float64")
    with pytest.raises(ValueError, match="n_bytes"):
        copy_bandwidth(0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_ceilings_are_plausible():
    assert 0 < gemm_ceiling(1024, 1024, 1024, "bfloat16", "cuda", **QUICK) < math.inf
    assert 0 < copy_bandwidth(64 * 2**20, "cuda", **QUICK) < math.inf


def test_read_bandwidth_counts_the_bytes_read_once():
    from moebench.measure.ceilings import read_bandwidth, read_samples

    samples = read_samples(2**22, min_samples=3, budget_s=0.05)
    assert read_bandwidth(2**22, min_samples=3, budget_s=0.05) > 0
    assert samples.n >= 3
    with pytest.raises(ValueError, match="n_bytes"):
        read_samples(2)


def test_dense_gemm_rate_times_the_full_size_gemm():
    from moebench.measure.ceilings import DENSE_GEMM_ROWS, dense_gemm_rate

    assert DENSE_GEMM_ROWS == 2048
    assert dense_gemm_rate(64, 32, "float32", min_samples=3, budget_s=0.05) > 0
