"""The element-wise passes around sort_gather's expert GEMMs, in plain C for CPU (no autograd):

    sort_by_expert(expert_A, kept_A, ...)     the kept assignments in expert order (a counting sort)
    swiglu_bf16(h_nI)                         act = silu(h[:, :F]) * h[:, F:]            bfloat16
    swiglu_f32_(h_nI)                         the same, float32, in place
    combine_add(y_TD, out_nD, token_n, w_n)   y[token[i]] += w[i] * out[i]               float32 y; out bf16/fp32
    combine_rows(outs, counts, token_S, w_S)  y[t] = sum over t's sorted rows s of w[s] * row s, float32 sums,
                                              returned in bf16 or fp32 (one pass, no float32 [T, D] buffer)

Why: with bf16 experts on AMX one expert's GEMM pair takes ~1.5 ms at the issue-5 shapes (n=512, D=512,
F=1408, 2 threads), and torch's passes around it cost a large share of that: silu and the product ~400 us
on [512, 1408] (two passes), the combine ~190 us (a mixed-dtype scale that widens out to float32 first,
then index_add_), the final float32 -> bf16 copy ~200 us, and the sort by expert ~0.6 ms per call (ten
small torch ops). Here swiglu is one pass (~200-250 us: float32 inside, AVX-512 where present, rounded
once to bf16), the combine widens, weights and adds in one, the sort is one counting pass. (A C gather
of each expert's rows measured no faster than index_select inside the expert loop, so there is none.)
combine_add gives each thread a block of columns, so equal tokens never race; combine_rows gives each
thread whole tokens (it sorts the rows by token first).
Numerics: swiglu's exp is range reduction plus a degree-5 polynomial (relative error < 3e-6, bf16's
step is 4e-3), silu(-inf) is NaN and exp overflows to inf as in torch; torch's unfused path rounds after
silu and again after the product, this rounds once. The combines sum the same float32 terms in the same
order as index_add_ of w * out (possibly contracted to fused multiply-adds).
The C source is moebench/kernels/csrc/dispatch.c, compiled once per machine (moebench.kernels.native_build);
`available()` says whether it did (`build().status` why not), and sort_gather falls back to torch when it
did not. Each C function is a torch custom op (torch.ops.moebench.swiglu_bf16, swiglu_f32_inplace,
sort_by_expert, combine_add, combine_rows) with a fake kernel, so fake tensors and torch.compile see
shapes without running C; the functions below check their arguments and call those ops.
Axis legend: T tokens, D model dim, n rows (one expert's assignments), S sorted kept assignments, F expert
hidden dim, I = 2F.
"""

from __future__ import annotations

import ctypes
import functools

import torch

from moebench.kernels import native_build

DTYPES = (torch.bfloat16, torch.float32)  # what combine_add and combine_rows take
# Below this many elements a pass runs on one thread (waking workers costs more than it saves).
SERIAL_ELEMENTS = 32768



@functools.cache
def build() -> native_build.Build:
    """csrc/dispatch.c compiled and loaded once per process (or why not)."""
    i64, ptr, c_int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    # 512-bit vectors for the auto-vectorised loops: swiglu is compute-bound (its exp); 20% faster than gcc's
    # default 256-bit here, measured with the scalar code before the AVX-512 intrinsics.
    built = native_build.load("dispatch", extra_flags=["-mprefer-vector-width=512"], signatures={
        "moe_swiglu_bf16": [ptr, ptr, i64, i64, c_int],
        "moe_swiglu_f32_inplace": [ptr, i64, i64, c_int],
        "moe_sort_by_expert": [ptr, ptr, ptr, ptr, i64, i64, ptr, ptr, ptr],
        "moe_combine_add": [ptr, ptr, c_int, ptr, ptr, i64, i64, i64, c_int],
        "moe_combine_rows": [ptr, c_int, ptr, ptr, i64, c_int, ptr, ptr, i64, i64, i64, c_int],
    })
    if built.dll is not None:
        built.dll.moe_sort_by_expert.restype = i64
    return built


def available() -> bool:
    """True when csrc/dispatch.c compiled and loaded here (build().status says why not)."""
    return build().dll is not None


def _lib() -> ctypes.CDLL:
    lib = build().dll
    if lib is None:
        raise RuntimeError(f"dispatch_native: native kernels {build().status}")
    return lib


def _threads(elements: int) -> int:
    if elements < SERIAL_ELEMENTS:
        return 1
    return max(1, min(torch.get_num_threads(), native_build.MAX_THREADS))


def _check(name: str, t: torch.Tensor, dtypes: tuple[torch.dtype, ...], ndim: int) -> None:
    if t.device.type != "cpu" or t.dtype not in dtypes or t.dim() != ndim or not t.is_contiguous():
        raise ValueError(f"dispatch_native: {name} must be a contiguous {ndim}-d CPU tensor of "
                         f"{' or '.join(str(d) for d in dtypes)}, got {t.dtype} {tuple(t.shape)} on {t.device}"
                         f"{'' if t.is_contiguous() else ' (not contiguous)'}")


# --- the C functions as torch custom ops -----------------------------------------------------------
# Each op checks its arguments (the C code trusts shapes, dtypes and layouts) and runs its C function on
# real CPU tensors; under a fake-tensor mode (moebench.measure.host_sync's probe, torch.compile's tracing)
# torch calls its fake kernel instead, which checks the same and only says what the outputs look like.
# Schemas mark the arguments an op writes (Tensor(a!)).
_OPS = torch.library.Library("moebench", "FRAGMENT")  # kept alive: dropping it would unregister the ops


def _check_swiglu_bf16(h_nI: torch.Tensor, out_nF: torch.Tensor) -> None:
    _check("h", h_nI, (torch.bfloat16,), 2)
    _check("out", out_nF, (torch.bfloat16,), 2)
    n, I = h_nI.shape
    if I % 2:
        raise ValueError(f"swiglu_bf16: h has {I} columns; it needs [gate | up], an even number")
    if out_nF.shape != (n, I // 2):
        raise ValueError(f"swiglu_bf16: out {tuple(out_nF.shape)} must be [{n}, {I // 2}]")


@native_build.custom_op(_OPS, "swiglu_bf16(Tensor h_nI, Tensor(a!) out_nF) -> ()", fake=_check_swiglu_bf16)
def _swiglu_bf16_op(h_nI: torch.Tensor, out_nF: torch.Tensor) -> None:
    _check_swiglu_bf16(h_nI, out_nF)
    n, F = out_nF.shape
    _lib().moe_swiglu_bf16(h_nI.data_ptr(), out_nF.data_ptr(), n, F, _threads(n * F))


def _check_swiglu_f32(h_nI: torch.Tensor) -> None:
    _check("h", h_nI, (torch.float32,), 2)
    if h_nI.shape[1] % 2:
        raise ValueError(f"swiglu_f32_: h has {h_nI.shape[1]} columns; it needs [gate | up], an even number")


@native_build.custom_op(_OPS, "swiglu_f32_inplace(Tensor(a!) h_nI) -> ()", fake=_check_swiglu_f32)
def _swiglu_f32_op(h_nI: torch.Tensor) -> None:
    _check_swiglu_f32(h_nI)
    n, I = h_nI.shape
    _lib().moe_swiglu_f32_inplace(h_nI.data_ptr(), n, I // 2, _threads(n * I // 2))


def _sorted_like(expert_A: torch.Tensor, kept_A: torch.Tensor, token_A: torch.Tensor, weight_A: torch.Tensor,
                 n_experts: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The sort's outputs, zeroed, after checking its arguments."""
    for name, t, dtype in (("expert", expert_A, torch.int64), ("kept", kept_A, torch.bool),
                           ("token", token_A, torch.int64), ("weight", weight_A, torch.float32)):
        _check(name, t, (dtype,), 1)
    A = len(expert_A)
    if not len(kept_A) == len(token_A) == len(weight_A) == A:
        raise ValueError(f"sort_by_expert: {A} experts, {len(kept_A)} kept flags, {len(token_A)} tokens and "
                         f"{len(weight_A)} weights disagree")
    return (expert_A.new_zeros(A), weight_A.new_zeros(A), expert_A.new_zeros(n_experts))


@native_build.custom_op(_OPS, "sort_by_expert(Tensor expert_A, Tensor kept_A, Tensor token_A, Tensor weight_A, "
                              "int n_experts) -> (Tensor, Tensor, Tensor)", fake=_sorted_like)
def _sort_by_expert_op(expert_A: torch.Tensor, kept_A: torch.Tensor, token_A: torch.Tensor, weight_A: torch.Tensor,
                       n_experts: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(token_A, weight_A, counts_E): the kept assignments' tokens and weights in expert order in the first
    sum(counts_E) entries (the rest 0, so the outputs are a function of the inputs), and the count per
    expert. Sizes are the inputs', so a fake tensor knows them; how many were kept is read from counts_E."""
    token_out, weight_out, counts_E = _sorted_like(expert_A, kept_A, token_A, weight_A, n_experts)
    S = _lib().moe_sort_by_expert(expert_A.data_ptr(), kept_A.data_ptr(), token_A.data_ptr(), weight_A.data_ptr(),
                                  len(expert_A), n_experts, token_out.data_ptr(), weight_out.data_ptr(),
                                  counts_E.data_ptr())
    if S == -1:
        bad = expert_A[kept_A & ((expert_A < 0) | (expert_A >= n_experts))][:5].tolist()
        raise ValueError(f"sort_by_expert: kept assignments name experts {bad} outside [0, {n_experts})")
    if S < 0:
        raise MemoryError("sort_by_expert: no memory for the counts")
    return token_out, weight_out, counts_E


def _check_combine_add(y_TD: torch.Tensor, out_nD: torch.Tensor, token_n: torch.Tensor,
                       weight_n: torch.Tensor) -> None:
    _check("y", y_TD, (torch.float32,), 2)
    _check("out", out_nD, (torch.bfloat16, torch.float32), 2)
    _check("token", token_n, (torch.int64,), 1)
    _check("weight", weight_n, (torch.float32,), 1)
    n, D = out_nD.shape
    if y_TD.shape[1] != D or len(token_n) != n or len(weight_n) != n:
        raise ValueError(f"combine_add: y {tuple(y_TD.shape)}, out {tuple(out_nD.shape)}, token "
                         f"{tuple(token_n.shape)}, weight {tuple(weight_n.shape)} disagree")


@native_build.custom_op(_OPS, "combine_add(Tensor(a!) y_TD, Tensor out_nD, Tensor token_n, Tensor weight_n) -> ()",
                        fake=_check_combine_add)
def _combine_add_op(y_TD: torch.Tensor, out_nD: torch.Tensor, token_n: torch.Tensor, weight_n: torch.Tensor) -> None:
    _check_combine_add(y_TD, out_nD, token_n, weight_n)
    (n, D), T = out_nD.shape, len(y_TD)
    threads = min(_threads(out_nD.numel()), max(1, D // 16))
    if _lib().moe_combine_add(y_TD.data_ptr(), out_nD.data_ptr(), int(out_nD.dtype == torch.bfloat16),
                              token_n.data_ptr(), weight_n.data_ptr(), n, T, D, threads):
        raise ValueError(f"combine_add: tokens {token_n[(token_n < 0) | (token_n >= T)][:5].tolist()} are "
                         f"outside [0, {T})")


def _combined_like(outs: list[torch.Tensor], counts: list[int], token_S: torch.Tensor, weight_S: torch.Tensor,
                   n_tokens: int, dtype: torch.dtype) -> torch.Tensor:
    """The combine's output, after checking its arguments."""
    if not outs or len(outs) != len(counts):
        raise ValueError(f"combine_rows: {len(outs)} outputs for {len(counts)} counts (at least one each)")
    D = outs[0].shape[-1]
    for out_nD, n in zip(outs, counts, strict=True):
        _check("out", out_nD, (outs[0].dtype,), 2)
        if out_nD.dtype not in DTYPES or out_nD.shape != (n, D):
            raise ValueError(f"combine_rows: an expert output is {out_nD.dtype} {tuple(out_nD.shape)}, expected "
                             f"[{n}, {D}] of {' or '.join(str(d) for d in DTYPES)}")
    _check("token", token_S, (torch.int64,), 1)
    _check("weight", weight_S, (torch.float32,), 1)
    if dtype not in DTYPES:
        raise ValueError(f"combine_rows: dtype={dtype} is invalid: allowed values are {DTYPES}")
    S = sum(counts)
    if len(token_S) != S or len(weight_S) != S:
        raise ValueError(f"combine_rows: {S} rows but {len(token_S)} tokens and {len(weight_S)} weights")
    return outs[0].new_empty(n_tokens, D, dtype=dtype)


@native_build.custom_op(_OPS, "combine_rows(Tensor[] outs, int[] counts, Tensor token_S, Tensor weight_S, "
                              "int n_tokens, ScalarType dtype) -> Tensor", fake=_combined_like)
def _combine_rows_op(outs: list[torch.Tensor], counts: list[int], token_S: torch.Tensor, weight_S: torch.Tensor,
                     n_tokens: int, dtype: torch.dtype) -> torch.Tensor:
    y_TD = _combined_like(outs, counts, token_S, weight_S, n_tokens, dtype)
    D, S = y_TD.shape[1], len(token_S)
    counts_E = torch.tensor(counts, dtype=torch.int64)
    base_E = torch.tensor([o.data_ptr() for o in outs], dtype=torch.int64)
    if _lib().moe_combine_rows(y_TD.data_ptr(), int(dtype == torch.bfloat16), base_E.data_ptr(), counts_E.data_ptr(),
                               len(outs), int(outs[0].dtype == torch.bfloat16), token_S.data_ptr(),
                               weight_S.data_ptr(), S, n_tokens, D, _threads(S * D)):
        raise MemoryError(f"combine_rows: no memory for the index of {S} rows and {n_tokens} tokens")
    return y_TD


# --- entry points: defaults and conversions, then the op ----------------------------------------------

def swiglu_bf16(h_nI: torch.Tensor, out_nF: torch.Tensor | None = None) -> torch.Tensor:
    """silu(gate) * up of bfloat16 h = [gate | up] ([n, 2F]), computed in float32, rounded once."""
    out_nF = h_nI.new_empty(h_nI.shape[0], h_nI.shape[-1] // 2) if out_nF is None else out_nF
    _swiglu_bf16_op(h_nI, out_nF)
    return out_nF


def sort_by_expert(expert_A: torch.Tensor, kept_A: torch.Tensor, token_A: torch.Tensor, weight_A: torch.Tensor,
                   n_experts: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(token_S, weight_S, counts): the kept assignments ordered by expert, stably (as a stable argsort
    of the expert ids), their tokens, their float32 weights, and how many each expert got. One host
    sync: the counts."""
    expert_A, token_A = (t.to(torch.int64).contiguous() for t in (expert_A, token_A))
    kept_A, weight_A = kept_A.to(torch.bool).contiguous(), weight_A.detach().float().contiguous()
    token_A, weight_A, counts_E = _sort_by_expert_op(expert_A, kept_A, token_A, weight_A, n_experts)
    counts = counts_E.tolist()
    S = sum(counts)
    return token_A[:S], weight_A[:S], counts


def swiglu_f32_(h_nI: torch.Tensor) -> torch.Tensor:
    """In place on float32 h = [gate | up] ([n, 2F], contiguous): gate := silu(gate) * up (float32 math
    with the polynomial exp: relative error ~3e-6 against torch's). Returns the gate half, a strided view."""
    _swiglu_f32_op(h_nI)
    return h_nI[:, :h_nI.shape[1] // 2]


def combine_add(y_TD: torch.Tensor, out_nD: torch.Tensor, token_n: torch.Tensor,
                weight_n: torch.Tensor) -> torch.Tensor:
    """y[token[i]] += weight[i] * out[i] in float32 (out bfloat16 or float32), in place; returns y.
    A token may repeat; one outside [0, T) is a ValueError (and nothing is written)."""
    _combine_add_op(y_TD, out_nD, token_n, weight_n)
    return y_TD


def combine_rows(outs: list[torch.Tensor], counts: list[int], token_S: torch.Tensor, weight_S: torch.Tensor,
                 n_tokens: int, d_model: int, dtype: torch.dtype) -> torch.Tensor:
    """y[t] = sum of weight[s] * row s over the sorted assignments s of token t, in float32, in sorted
    order; returned in dtype (bfloat16 or float32). Row s is row s - start_e of outs[e], the output of
    expert e, which holds sorted assignments [start_e, start_e + counts[e]). Tokens without rows get 0, and
    so do tokens outside [0, n_tokens)."""
    if len(outs) != len(counts):
        raise ValueError(f"combine_rows: {len(outs)} outputs for {len(counts)} counts")
    if not outs or not d_model:
        return torch.zeros(n_tokens, d_model, dtype=dtype)
    if outs[0].shape[-1] != d_model:
        raise ValueError(f"combine_rows: an expert output is {tuple(outs[0].shape)}, expected [{counts[0]}, "
                         f"{d_model}]")
    S = sum(counts)
    if len(token_S) < S or len(weight_S) < S:
        raise ValueError(f"combine_rows: {S} rows but {len(token_S)} tokens and {len(weight_S)} weights")
    return _combine_rows_op(outs, counts, token_S[:S].contiguous(), weight_S[:S], n_tokens, dtype)


__all__ = ["DTYPES", "available", "build", "combine_add", "combine_rows", "sort_by_expert", "swiglu_bf16",
           "swiglu_f32_"]
