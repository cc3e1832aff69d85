"""pytest-benchmark entry points for teams that already track benchmarks with it.

    pytest benchmarks/ --benchmark-autosave                       # save a baseline (.benchmarks/)
    pytest benchmarks/ --benchmark-compare --benchmark-compare-fail=median:10%

`python -m pytest` (testpaths = tests) never collects this folder; name it to run it.
The timer (test_ci_layers.synced_perf_counter) synchronises CUDA before reading the clock, so a GPU
layer is timed to the end of its kernels rather than to the end of their launch; on CPU it is plain
perf_counter (torch CPU ops are synchronous). Device: MOEBENCH_DEVICE=cpu|cuda (default: cuda when available).
"""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(scope="session")
def device() -> str:
    default = "cuda" if torch.cuda.is_available() else "cpu"
    chosen = os.environ.get("MOEBENCH_DEVICE", default)
    if chosen not in ("cpu", "cuda"):
        raise pytest.UsageError(f"MOEBENCH_DEVICE={chosen!r}: allowed values are cpu, cuda")
    if chosen == "cuda" and not torch.cuda.is_available():
        pytest.skip("MOEBENCH_DEVICE=cuda but CUDA is not available")
    return chosen


@pytest.fixture(autouse=True, scope="session")
def _one_thread_per_benchmark():
    """A fixed, recorded thread count, as moebench's own runs (README "How it measures")."""
    threads = int(os.environ.get("MOEBENCH_THREADS", "1"))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    yield
    torch.set_num_threads(previous)
