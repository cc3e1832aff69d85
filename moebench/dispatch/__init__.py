"""Interchangeable execution backends for the routed experts, registered by name.

Pick one per layer with LayerSpec.backend; `moebench list` shows them with what they support.
"""

from __future__ import annotations

from moebench.dispatch.common import Backend
from moebench.dispatch.grouped_mm import run_grouped_mm
from moebench.dispatch.loop import run_loop
from moebench.dispatch.padded import run_padded
from moebench.dispatch.sort_gather import run_sort_gather
from moebench.dispatch.triton import TritonBackend, run_triton

BACKENDS: dict[str, Backend] = {
    "loop": Backend("loop", run_loop, "python loop over experts: gather, FFN, scatter (the reference)",
                    graph_capturable=False, host_syncs=True),
    "sort_gather": Backend("sort_gather", run_sort_gather,
                           "sort assignments by expert, gather tokens, one GEMM pair per expert",
                           graph_capturable=False, host_syncs=True),
    "grouped_mm": Backend("grouped_mm", run_grouped_mm,
                          "sort assignments by expert, gather tokens once, one grouped GEMM per weight "
                          "(torch grouped_mm, int32 offsets; CPU: fp32/bf16/fp16, CUDA: bf16 on SM90/SM100); "
                          "elsewhere, or where a row stride of D, 2F/F or F is not 16-byte aligned, one GEMM "
                          "pair per expert; syncs once for the number of kept assignments",
                          graph_capturable=False, host_syncs=True),
    # Flags hold for every mode a backend supports; padded is sync-free only with a capacity.
    "padded": Backend("padded", run_padded,
                      "capacity buffers [E, C, D] filled in assignment order, one bmm per weight (GShard/Switch); "
                      "with a capacity_factor the backend itself has static shapes and no host sync "
                      "(CUDA-graph safe); dropless: C = max expert load, one host sync",
                      graph_capturable=False, host_syncs=True),
    "triton": TritonBackend("triton", run_triton,
                            "sort assignments by expert, then Triton grouped-GEMM kernels that gather rows by index "
                            "and fuse activation and combine weight (CUDA; CPU only under TRITON_INTERPRET=1); "
                            "backward in torch (grouped_mm); syncs once for the number of kept assignments",
                            graph_capturable=False, host_syncs=True),
}


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise ValueError(f"unknown dispatch backend {name!r}; valid backends are " + ", ".join(BACKENDS))
    return BACKENDS[name]


__all__ = ["BACKENDS", "Backend", "get_backend"]
