"""Peak memory of a region: the most bytes live at once above what was live at entry.

CUDA: the caching allocator keeps the statistic for us. We synchronise, note memory_allocated(),
reset the peak, run, synchronise, and report max_memory_allocated() - allocated_at_entry. These are
bytes handed to tensors; the allocator's reserved pool (also reported) is larger by fragmentation.

CPU: torch has no CPU allocator statistics, so we run the region under torch.profiler with
profile_memory=True (checked on torch 2.13 CPU). It records one event per allocation (+bytes) and
free (-bytes) in time order; the running sum of those is the live bytes allocated in the region, and
its maximum is the peak. Frees of blocks allocated before entry are not reported by the profiler (it
warns "Memory block of unknown size"), so a region that frees old tensors and then allocates new
ones is charged for the new ones in full: the CPU figure can overstate, never understate, the peak
of new allocations. Only torch tensor memory is seen (not Python objects, not library workspaces
outside the torch allocator). The profiler slows the region, so never time it in the same run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch.profiler import ProfilerActivity, profile


@dataclass
class PeakMemory:
    peak_bytes: int  # most bytes live at once, above the entry baseline
    device: str
    method: str  # "cuda.max_memory_allocated" | "torch.profiler"
    peak_reserved_bytes: int | None = None  # CUDA only: growth of the allocator's reserved pool

    def to_dict(self) -> dict:
        return asdict(self)


class PeakMemoryTracker:
    """`with PeakMemoryTracker(device) as t: ...` then t.result (a PeakMemory)."""

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.result: PeakMemory | None = None
        self._prof = None

    def __enter__(self) -> PeakMemoryTracker:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # frees of queued kernels' inputs must land first
            self._allocated0 = torch.cuda.memory_allocated(self.device)
            self._reserved0 = torch.cuda.memory_reserved(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.device.type == "cpu":
            self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
            self._prof.__enter__()
        else:
            raise ValueError(f"device={str(self.device)!r} is invalid: allowed types are cpu, cuda")
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.result = PeakMemory(
                peak_bytes=max(0, torch.cuda.max_memory_allocated(self.device) - self._allocated0),
                device=str(self.device), method="cuda.max_memory_allocated",
                peak_reserved_bytes=max(0, torch.cuda.max_memory_reserved(self.device) - self._reserved0))
        else:
            self._prof.__exit__(*exc)
            if exc[0] is None:
                self.result = PeakMemory(peak_bytes=peak_live_bytes(_cpu_memory_deltas(self._prof)),
                                         device="cpu", method="torch.profiler")
            self._prof = None
        return False


def peak_memory(fn: Callable[[], object], device: str | torch.device = "cpu") -> PeakMemory:
    """Peak bytes live during one call of fn(), above the baseline at entry."""
    with PeakMemoryTracker(device) as tracker:
        fn()
    return tracker.result


def peak_live_bytes(deltas: list[int]) -> int:
    """Max over time of the running sum of allocation (+) / free (-) sizes, and never below 0."""
    live = peak = 0
    for d in deltas:
        live += d
        peak = max(peak, live)
    return peak


def _cpu_memory_deltas(prof) -> list[int]:
    """Signed CPU allocation sizes in time order from a finished profile_memory=True profile."""
    # kineto_results carries one "[memory]" event per allocation and free with its own timestamp.
    # The aggregated prof.events() attribute allocations to ops and net out temporaries freed inside
    # one op, which would hide part of the peak, so we read the raw events.
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type().name == "CPU"]
    events.sort(key=lambda e: e.start_ns())
    return [e.nbytes() for e in events]
