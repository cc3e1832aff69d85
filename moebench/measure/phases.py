"""Per-phase timing: where one forward spends its time (router, dispatch, experts, combine; for PEER
query, subkey_scores, candidate_topk, gather_experts).

Layers wrap their phases in `with phase("router"): ...`. With no recorder active that costs one
contextvar lookup and a shared null context. Inside `with PhaseRecorder(device) as rec:` each phase
synchronises the device at entry and exit (CUDA work is asynchronous: without a sync a phase would be
charged for the kernels still queued by the one before) and adds its elapsed time to rec.totals.

Nesting: a phase inside another is timed inclusively. `totals` holds every name (inclusive times),
`top_totals` only phases entered at depth 0; the breakdown sums top-level phases so nothing is
counted twice. The recorder lives in a contextvar, so phases run in other threads are not recorded.

The syncs add overhead the un-instrumented run does not have; `phase_breakdown` measures both so the
report can state how well the phases add up (phase_sum_over_total, docs/results.md#metric-contract).
"""

from __future__ import annotations

import contextlib
import contextvars
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

_ACTIVE: contextvars.ContextVar[PhaseRecorder | None] = contextvars.ContextVar("moebench_phase_recorder",
                                                                              default=None)
_NULL = contextlib.nullcontext()


def phase(name: str):
    """Context manager timing one phase when a PhaseRecorder is active; a no-op otherwise."""
    rec = _ACTIVE.get()
    return _NULL if rec is None else _Span(rec, name)


def make_sync(device: str | torch.device | None) -> Callable[[], None]:
    """A function that waits for all queued work on the device (nothing to wait for on CPU)."""
    if device is not None and torch.device(device).type == "cuda":
        dev = torch.device(device)
        return lambda: torch.cuda.synchronize(dev)
    return lambda: None


class _Span:
    __slots__ = ("rec", "name", "t0")

    def __init__(self, rec: PhaseRecorder, name: str):
        self.rec, self.name = rec, name

    def __enter__(self):
        self.rec.sync()
        self.rec.depth += 1
        self.t0 = self.rec.clock()

    def __exit__(self, *exc):
        self.rec.sync()
        dt = self.rec.clock() - self.t0
        self.rec.depth -= 1
        self.rec.totals[self.name] += dt
        self.rec.counts[self.name] += 1
        if self.rec.depth == 0:
            self.rec.top_totals[self.name] += dt
        return False


class PhaseRecorder:
    """Accumulates seconds per phase name while active (`with PhaseRecorder(device) as rec:`)."""

    def __init__(self, device: str | torch.device | None = None, clock: Callable[[], float] = time.perf_counter,
                 sync: Callable[[], None] | None = None):
        self.clock = clock
        self.sync = sync if sync is not None else make_sync(device)
        self.totals: dict[str, float] = defaultdict(float)  # inclusive, every depth
        self.top_totals: dict[str, float] = defaultdict(float)  # depth-0 phases only
        self.counts: dict[str, int] = defaultdict(int)
        self.depth = 0
        self._token = None

    def __enter__(self) -> PhaseRecorder:
        if self._token is not None:
            raise RuntimeError("PhaseRecorder is already active; create a new one to nest recorders")
        self._token = _ACTIVE.set(self)
        return self

    def __exit__(self, *exc):
        _ACTIVE.reset(self._token)
        self._token = None
        return False


@dataclass
class PhaseBreakdown:
    """Median seconds per phase over `repeats` instrumented runs, and the un-instrumented total."""

    phases: dict[str, float]  # top-level phases: these are the breakdown and add up
    nested: dict[str, float]  # every phase name, inclusive time (nested ones included)
    total_s: float  # median wall time of fn without a recorder (the number the breakdown explains)
    instrumented_total_s: float  # median wall time of fn with the recorder (includes sync overhead)
    ratio: float  # sum(phases) / total_s; 1.0 = phases explain the whole run
    repeats: int
    raw_total_s: list[float]  # every plain run, in order
    raw_phases: list[dict[str, float]]  # top-level phase seconds of every instrumented run, in order

    def to_dict(self) -> dict:
        return asdict(self)


def phase_breakdown(fn: Callable[[], object], device: str | torch.device | None = None, *, repeats: int = 5,
                    warmup: int = 1, setup: Callable[[], object] | None = None,
                    clock: Callable[[], float] = time.perf_counter,
                    sync: Callable[[], None] | None = None) -> PhaseBreakdown:
    """Run fn under a PhaseRecorder `repeats` times, interleaved with as many plain runs.

    Interleaving makes slow drift (clock boost, thermal, other processes) hit both sides alike.
    The plain total is timed with the same clock, synchronising only before and after fn.
    A phase that did not run in some repeat counts 0 s there. setup() runs before every call, untimed.
    """
    if repeats < 1:
        raise ValueError(f"repeats={repeats} is invalid: must be >= 1")
    sync = sync if sync is not None else make_sync(device)
    for _ in range(warmup):
        if setup is not None:
            setup()
        fn()
    recs, plain, instrumented = [], [], []
    for _ in range(repeats):
        if setup is not None:
            setup()
        sync()
        t0 = clock()
        fn()
        sync()
        plain.append(clock() - t0)
        if setup is not None:
            setup()
        with PhaseRecorder(clock=clock, sync=sync) as rec:
            sync()
            t0 = clock()
            fn()
            sync()
            instrumented.append(clock() - t0)
        recs.append(rec)

    def medians(attr: str) -> dict[str, float]:
        names = dict.fromkeys(name for r in recs for name in getattr(r, attr))  # first-seen order
        return {name: statistics.median(getattr(r, attr).get(name, 0.0) for r in recs) for name in names}

    phases = medians("top_totals")
    total = statistics.median(plain)
    return PhaseBreakdown(phases=phases, nested=medians("totals"), total_s=total,
                          instrumented_total_s=statistics.median(instrumented),
                          ratio=sum(phases.values()) / total if total > 0 else float("nan"), repeats=repeats,
                          raw_total_s=plain, raw_phases=[dict(r.top_totals) for r in recs])
