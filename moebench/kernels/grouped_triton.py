"""Grouped GEMM over the tokens sorted by expert, in two Triton kernels (forward only).

Rows S are the kept assignments sorted by expert; a tile is BLOCK_M consecutive rows of ONE expert,
so every tile multiplies by one expert's weights. The tile list is built on the device from the
per-expert counts with an upper bound on its length (ceil(S / BLOCK_M) + E), so it needs no host sync;
unused tiles have no rows and return at once.

    _in_kernel:  h_SF[rows]  = act(x_TD[token_S[rows]] @ w_in_EID[e].T)   gather inside the kernel;
                 swiglu keeps two accumulators (gate rows [0, F), up rows [F, 2F)) and fuses silu(g)*u
    _out_kernel: out_SD[rows] = weight_S[rows] * (h_SF[rows] @ w_out_EDF[e].T)   in float32

The caller scatter-adds out_SD into y_TD in float32 (index_add: deterministic, unlike atomics).
Accumulation is float32; float32 operands use IEEE products (no TF32), so results match torch.
Axis legend: T tokens, D model dim, F expert hidden dim, E experts, I = rows of w_in, S sorted kept
assignments, L tiles.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

ACTS = {"swiglu": 0, "gelu": 1, "relu": 2}


@triton.jit
def _mm(a, b, acc, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """acc + a @ b. UPCAST (the interpreter): float32 operands, as its 16-bit tl.dot returns garbage
    (triton 3.9, measured)."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def _in_kernel(x_ptr, tok_ptr, w_ptr, h_ptr, exp_ptr, start_ptr, end_ptr, D, Fh, stride_x, stride_we, stride_wi,
               stride_h, ACT: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr,
               BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    tile, nb = tl.program_id(0), tl.program_id(1)
    r0, r1 = tl.load(start_ptr + tile), tl.load(end_ptr + tile)
    if r0 >= r1:
        return
    e = tl.load(exp_ptr + tile).to(tl.int64)
    rows = r0 + tl.arange(0, BLOCK_M)
    row_ok = rows < r1
    tok = tl.load(tok_ptr + rows, mask=row_ok, other=0).to(tl.int64)
    n = nb * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < Fh
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_up = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    w_e = w_ptr + e * stride_we
    for k0 in range(0, D, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < D
        x_MK = tl.load(x_ptr + tok[:, None] * stride_x + k[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w_ok = k_ok[:, None] & n_ok[None, :]
        w_KN = tl.load(w_e + n[None, :] * stride_wi + k[:, None], mask=w_ok, other=0.0)
        acc = _mm(x_MK, w_KN, acc, PRECISION, UPCAST)
        if ACT == 0:  # swiglu: the up rows sit F rows below the gate rows
            u_KN = tl.load(w_e + (n[None, :] + Fh) * stride_wi + k[:, None], mask=w_ok, other=0.0)
            acc_up = _mm(x_MK, u_KN, acc_up, PRECISION, UPCAST)
    if ACT == 0:
        h = acc / (1.0 + tl.exp(-acc)) * acc_up
    elif ACT == 1:
        h = 0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))
    else:
        h = tl.maximum(acc, 0.0)
    tl.store(h_ptr + rows[:, None] * stride_h + n[None, :], h.to(h_ptr.dtype.element_ty),
             mask=row_ok[:, None] & n_ok[None, :])


@triton.jit
def _out_kernel(h_ptr, w_ptr, wt_ptr, out_ptr, exp_ptr, start_ptr, end_ptr, D, Fh, stride_h, stride_we, stride_wd,
                stride_o, PRECISION: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    tile, nb = tl.program_id(0), tl.program_id(1)
    r0, r1 = tl.load(start_ptr + tile), tl.load(end_ptr + tile)
    if r0 >= r1:
        return
    e = tl.load(exp_ptr + tile).to(tl.int64)
    rows = (r0 + tl.arange(0, BLOCK_M)).to(tl.int64)
    row_ok = rows < r1
    n = nb * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < D
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, Fh, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < Fh
        h_MK = tl.load(h_ptr + rows[:, None] * stride_h + k[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w_KN = tl.load(w_ptr + e * stride_we + n[None, :] * stride_wd + k[:, None], mask=k_ok[:, None] & n_ok[None, :],
                       other=0.0)
        acc = _mm(h_MK, w_KN, acc, PRECISION, UPCAST)
    acc = acc * tl.load(wt_ptr + rows, mask=row_ok, other=0.0)[:, None]
    tl.store(out_ptr + rows[:, None] * stride_o + n[None, :], acc, mask=row_ok[:, None] & n_ok[None, :])


def tile_schedule(counts_E: torch.Tensor, n_rows: int, block_m: int) -> tuple[torch.Tensor, ...]:
    """(expert_L, start_L, end_L): row range [start, end) of each tile; unused tiles have start >= end."""
    E = counts_E.numel()
    tiles_E = (counts_E + block_m - 1) // block_m
    tile_end_E = torch.cumsum(tiles_E, 0)
    row_end_E = torch.cumsum(counts_E, 0)
    i_L = torch.arange(triton.cdiv(n_rows, block_m) + E, device=counts_E.device)
    expert_L = torch.searchsorted(tile_end_E, i_L, right=True)  # E past the last used tile
    valid_L = expert_L < E
    e_L = expert_L.clamp(max=E - 1)
    start_L = row_end_E[e_L] - counts_E[e_L] + (i_L - (tile_end_E[e_L] - tiles_E[e_L])) * block_m
    end_L = torch.where(valid_L, torch.minimum(row_end_E[e_L], start_L + block_m), torch.zeros_like(start_L))
    return e_L.contiguous(), start_L.contiguous(), end_L.contiguous()


def grouped_ffn(x_TD: torch.Tensor, token_S: torch.Tensor, weight_S: torch.Tensor, counts_E: torch.Tensor,
                w_in_EID: torch.Tensor, w_out_EDF: torch.Tensor, activation: str) -> torch.Tensor:
    """out_SD (float32) = weight_S * FFN_e(x[token_S]) for rows sorted by expert with counts_E."""
    S, D, Fh = token_S.numel(), x_TD.shape[1], w_out_EDF.shape[2]
    out_SD = torch.empty(S, D, dtype=torch.float32, device=x_TD.device)
    if S == 0:
        return out_SD
    cpu = x_TD.device.type == "cpu"  # CPU tensors run only under the interpreter
    bm, bn, bk = (16, 16, 16) if cpu else (64, 64, 32)
    precision = "ieee" if x_TD.dtype == torch.float32 else "tf32"  # ignored for 16-bit operands
    x_TD, w_in_EID, w_out_EDF = x_TD.contiguous(), w_in_EID.contiguous(), w_out_EDF.contiguous()
    expert_L, start_L, end_L = tile_schedule(counts_E, S, bm)
    h_SF = torch.empty(S, Fh, dtype=x_TD.dtype, device=x_TD.device)
    L = expert_L.numel()
    _in_kernel[(L, triton.cdiv(Fh, bn))](
        x_TD, token_S.contiguous(), w_in_EID, h_SF, expert_L, start_L, end_L, D, Fh, x_TD.stride(0),
        w_in_EID.stride(0), w_in_EID.stride(1), h_SF.stride(0), ACT=ACTS[activation], PRECISION=precision,
        UPCAST=cpu, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)
    _out_kernel[(L, triton.cdiv(D, bn))](
        h_SF, w_out_EDF, weight_S.float().contiguous(), out_SD, expert_L, start_L, end_L, D, Fh, h_SF.stride(0),
        w_out_EDF.stride(0), w_out_EDF.stride(1), out_SD.stride(0), PRECISION=precision,
        UPCAST=cpu, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)
    return out_SD
