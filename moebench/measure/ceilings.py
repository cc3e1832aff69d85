"""Machine ceilings measured in the same run: what this device reaches on a plain GEMM and a plain copy.

A layer's throughput means little alone: 40% of the GEMM ceiling says more than "3 TFLOP/s". Both
ceilings are measured with the same timer and sampling rules as the layers (timers.measure), on the
same device, dtype and thread count, so the fraction reached compares like with like.

GEMM: C = A @ B with A [m, k], B [k, n] counts 2*m*n*k FLOPs (one multiply and one add per term).
Expert GEMMs: the per-expert GEMM pairs of a routed FFN, same shapes, as plain GEMMs (what a
dispatch backend's experts would cost with free gather, activation and combine).
Streaming read: a sum over a float32 buffer of n_bytes counts n_bytes read (nothing written): what a
layer that only reads its weights once (a decode step) can hope for. On CPUs it is well above the copy
rate, which also pays the write and the write-allocate read.
Copy: dst.copy_(src) of n_bytes counts 2*n_bytes moved (n read + n written). On CPUs with
write-allocate caches the hardware also reads dst before writing it (3*n_bytes of traffic), so this
is the bandwidth a torch copy achieves, the figure a memory-bound layer can hope for, not the DRAM
peak. Use n_bytes well above the last-level cache (L2 on GPU) to measure memory, not cache.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from moebench.dispatch.common import expert_rows
from moebench.measure.timers import Samples, Timer, make_timer, measure

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def as_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is invalid: allowed values are {', '.join(DTYPES)}")
    return DTYPES[dtype]


def gemm_samples(m: int, n: int, k: int, dtype: str | torch.dtype = "float32", device: str = "cpu", *,
                 timer: Timer | None = None, seed: int = 0, **measure_kwargs: Any) -> Samples:
    """Timing samples of one [m, k] @ [k, n] matmul into a preallocated output."""
    dt, dev = as_dtype(dtype), torch.device(device)
    gen = torch.Generator(device=dev).manual_seed(seed)
    a_MK = torch.randn(m, k, generator=gen, device=dev, dtype=torch.float32).to(dt)
    b_KN = torch.randn(k, n, generator=gen, device=dev, dtype=torch.float32).to(dt)
    c_MN = torch.empty(m, n, device=dev, dtype=dt)  # out= keeps allocation out of the timed region
    return measure(lambda: torch.mm(a_MK, b_KN, out=c_MN), timer or make_timer(dev), **measure_kwargs)


def gemm_ceiling(m: int, n: int, k: int, dtype: str | torch.dtype = "float32", device: str = "cpu", *,
                 timer: Timer | None = None, **measure_kwargs: Any) -> float:
    """FLOP/s of a dense [m, k] @ [k, n] matmul: 2*m*n*k / median time."""
    samples = gemm_samples(m, n, k, dtype, device, timer=timer, **measure_kwargs)
    return 2 * m * n * k / samples.median


DENSE_GEMM_ROWS = 2048  # rows of the dense-GEMM rate's GEMM: enough that the GEMM runs compute-bound


def dense_gemm_rate(d_model: int, d_out: int, dtype: str | torch.dtype = "float32", device: str = "cpu", *,
                    timer: Timer | None = None, **measure_kwargs: Any) -> float:
    """FLOP/s of the dense GEMM a layer's projection reaches at full size: [2048, d_model] @ [d_model, d_out].

    The FLOP side of the decode floor (accounting.weight_read_floor): what the layer's expert FLOPs would
    cost at the machine's GEMM rate for these dimensions, however few rows a decode step gives each expert.
    """
    return gemm_ceiling(DENSE_GEMM_ROWS, d_out, d_model, dtype, device, timer=timer, **measure_kwargs)


def copy_samples(n_bytes: int, device: str = "cpu", *, timer: Timer | None = None,
                 **measure_kwargs: Any) -> Samples:
    """Timing samples of copying n_bytes from one preallocated buffer into another."""
    if n_bytes < 1:
        raise ValueError(f"n_bytes={n_bytes} is invalid: must be >= 1")
    dev = torch.device(device)
    src = torch.ones(n_bytes, dtype=torch.uint8, device=dev)  # touched, so pages exist before timing
    dst = torch.zeros(n_bytes, dtype=torch.uint8, device=dev)
    return measure(lambda: dst.copy_(src), timer or make_timer(dev), **measure_kwargs)


def read_samples(n_bytes: int, device: str = "cpu", *, timer: Timer | None = None,
                 **measure_kwargs: Any) -> Samples:
    """Timing samples of one streaming read of n_bytes: torch.sum over a float32 buffer of that size."""
    if n_bytes < 4:
        raise ValueError(f"n_bytes={n_bytes} is invalid: must be >= 4 (one float32)")
    dev = torch.device(device)
    src = torch.ones(n_bytes // 4, dtype=torch.float32, device=dev)  # touched, so pages exist before timing
    return measure(lambda: torch.sum(src), timer or make_timer(dev), **measure_kwargs)


def read_bandwidth(n_bytes: int = 2**30, device: str = "cpu", *, timer: Timer | None = None,
                   **measure_kwargs: Any) -> float:
    """Bytes/s of a streaming read (a sum over n_bytes, default 1 GiB): n_bytes / median time."""
    return (n_bytes // 4 * 4) / read_samples(n_bytes, device, timer=timer, **measure_kwargs).median


def copy_bandwidth(n_bytes: int = 256 * 2**20, device: str = "cpu", *, timer: Timer | None = None,
                   **measure_kwargs: Any) -> float:
    """Bytes/s of a device-local copy, counting read + write: 2*n_bytes / median time."""
    return 2 * n_bytes / copy_samples(n_bytes, device, timer=timer, **measure_kwargs).median


def expert_gemm_runs(rows_per_expert: list[int], d_model: int, d_in: int, d_hidden: int,
                     dtype: str | torch.dtype = "float32", device: str = "cpu", *, seed: int = 0,
                     packed: bool = False) -> dict[str, Callable[[], None]]:
    """The GEMMs a routed FFN runs, as plain dense GEMMs of the same shapes, ready to time: for each
    expert with n rows, [n, d_model] @ [d_model, d_in] and [n, d_hidden] @ [d_hidden, d_model], back to
    back, on contiguous operands already in place (no gather, activation or combine). One zero-argument
    callable per weight layout: "linear" (the [n, k] transposed view F.linear uses) and "row-major"
    ([k, n]), both torch.mm into preallocated outputs; or, with packed=True, only "packed": the weights
    reordered once into oneDNN's blocked layout (what inference stacks and moebench's bf16 CPU path do;
    torch.ops.mkldnn, CPU only), the faster GEMMs a dense model gets only by prepacking. Raises
    ValueError where that op is missing."""
    dt, dev = as_dtype(dtype), torch.device(device)
    if any(n < 0 for n in rows_per_expert):
        raise ValueError(f"rows_per_expert={rows_per_expert} is invalid: counts must be >= 0")
    linear = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
    if packed and (dev.type != "cpu" or linear is None or not torch.backends.mkldnn.is_available()):
        raise ValueError(f"packed=True needs a CPU device and torch's oneDNN ops (device={device})")
    gen = torch.Generator(device=dev).manual_seed(seed)
    S, E = sum(rows_per_expert), len(rows_per_expert)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, device=dev, dtype=torch.float32).to(dt)

    x_SD, act_SF = rand(S, d_model), rand(S, d_hidden)
    h_SI, out_SD = x_SD.new_empty(S, d_in), x_SD.new_empty(S, d_model)
    w_in_EID, w_out_EDF = rand(E, d_in, d_model), rand(E, d_model, d_hidden)
    slices = list(expert_rows(rows_per_expert))
    if packed:
        def pack(w: torch.Tensor) -> torch.Tensor:
            return torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), max(max(rows_per_expert, default=1), 1))

        w_in_packed, w_out_packed = [pack(w) for w in w_in_EID], [pack(w) for w in w_out_EDF]

        def run_packed() -> None:  # oneDNN allocates each output (no out= variant)
            for e, rows in slices:
                linear(x_SD[rows], w_in_packed[e], None, "none", [], "")
                linear(act_SF[rows], w_out_packed[e], None, "none", [], "")

        return {"packed": run_packed}

    def runner(w_in_EDI: torch.Tensor, w_out_EFD: torch.Tensor) -> Callable[[], None]:
        def run() -> None:
            for e, rows in slices:
                torch.mm(x_SD[rows], w_in_EDI[e], out=h_SI[rows])
                torch.mm(act_SF[rows], w_out_EFD[e], out=out_SD[rows])
        return run

    return {"linear": runner(w_in_EID.transpose(1, 2), w_out_EDF.transpose(1, 2)),
            "row-major": runner(w_in_EID.transpose(1, 2).contiguous(), w_out_EDF.transpose(1, 2).contiguous())}


def expert_gemm_samples(rows_per_expert: list[int], d_model: int, d_in: int, d_hidden: int,
                        dtype: str | torch.dtype = "float32", device: str = "cpu", *, timer: Timer | None = None,
                        seed: int = 0, packed: bool = False, **measure_kwargs: Any) -> Samples:
    """Timing samples of expert_gemm_runs: of its faster layout (the one with the lower median), or of
    the packed weights with packed=True.

    The fraction a dispatch backend reaches of this time is what its gather, activation and combine
    cost on top of the expert GEMMs themselves; the GEMMs' own efficiency at these shapes (small n
    per expert) is the design's, measured separately against one GEMM over all rows (gemm_samples)."""
    runs = expert_gemm_runs(rows_per_expert, d_model, d_in, d_hidden, dtype, device, seed=seed, packed=packed)
    timer = timer or make_timer(torch.device(device))
    results = [measure(run, timer, **measure_kwargs) for run in runs.values()]
    return min(results, key=lambda s: s.median)
