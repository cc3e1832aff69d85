"""Interchangeable execution backends for the routed experts, registered by name.

Pick one per layer with LayerSpec.backend; `moebench list` shows them with what they support.
"""

from __future__ import annotations

from moebench.dispatch.common import Backend
from moebench.dispatch.loop import run_loop
from moebench.dispatch.sort_gather import run_sort_gather

BACKENDS: dict[str, Backend] = {
    "loop": Backend("loop", run_loop, "python loop over experts: gather, FFN, scatter (the reference)",
                    graph_capturable=False, host_syncs=True),
    "sort_gather": Backend("sort_gather", run_sort_gather,
                           "sort assignments by expert, gather tokens, one GEMM pair per expert",
                           graph_capturable=False, host_syncs=True),
}


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise ValueError(f"unknown dispatch backend {name!r}; valid backends are " + ", ".join(BACKENDS))
    return BACKENDS[name]


__all__ = ["BACKENDS", "Backend", "get_backend"]
