"""PEER's gather + expert step as one Triton kernel: one program per token, H*K experts in blocks.

    for each block of BLOCK_A retrieved experts a of token t:
        h_a = u[idx[t, a]] . x_t                  (rows gathered by index inside the kernel)
        y_t += act(h_a) * g[t, a] * v[idx[t, a]]
    all in float32 registers; y is written once in x's dtype. No [T, A, D] buffer exists anywhere.

D is held whole in registers (BLOCK_D = next power of two >= D), which suits PEER's D <= 8192.
Backward is not a kernel: `peer_experts_triton` is an autograd.Function whose backward recomputes the
step with moebench.kernels.peer_experts' torch path and differentiates that (same math, same results).
Runs on CUDA, or on CPU tensors under the Triton interpreter (TRITON_INTERPRET=1 before triton is
imported), which is how the tests check it.
Axis legend: T tokens, D model dim, N experts, A = H*K retrieved experts per token.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

ACTS = {"gelu": 0, "relu": 1}


@triton.jit
def _act(h, ACT: tl.constexpr):
    if ACT == 0:  # exact (erf) gelu, as torch's default
        return 0.5 * h * (1.0 + tl.math.erf(h * 0.7071067811865476))
    return tl.maximum(h, 0.0)


@triton.jit
def _peer_experts_kernel(x_ptr, u_ptr, v_ptr, idx_ptr, g_ptr, y_ptr, A, D, stride_x, stride_u, stride_v,
                         stride_y, ACT: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_D: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    x_D = tl.load(x_ptr + t * stride_x + d, mask=d_ok, other=0.0).to(tl.float32)
    y_D = tl.zeros([BLOCK_D], dtype=tl.float32)
    for a0 in range(0, A, BLOCK_A):
        a = a0 + tl.arange(0, BLOCK_A)
        a_ok = a < A
        row_A = tl.load(idx_ptr + t * A + a, mask=a_ok, other=0).to(tl.int64)
        ok_AD = a_ok[:, None] & d_ok[None, :]
        u_AD = tl.load(u_ptr + row_A[:, None] * stride_u + d[None, :], mask=ok_AD, other=0.0).to(tl.float32)
        h_A = tl.sum(u_AD * x_D[None, :], axis=1)
        w_A = _act(h_A, ACT) * tl.load(g_ptr + t * A + a, mask=a_ok, other=0.0)  # masked rows: g = 0
        v_AD = tl.load(v_ptr + row_A[:, None] * stride_v + d[None, :], mask=ok_AD, other=0.0).to(tl.float32)
        y_D += tl.sum(w_A[:, None] * v_AD, axis=0)
    tl.store(y_ptr + t * stride_y + d, y_D.to(y_ptr.dtype.element_ty), mask=d_ok)


def peer_experts_forward(x_TD: torch.Tensor, u_ND: torch.Tensor, v_ND: torch.Tensor, idx_TA: torch.Tensor,
                         gate_TA: torch.Tensor, activation: str, block_a: int = 16) -> torch.Tensor:
    """Launch the kernel: y_TD in u's dtype (the torch path returns v's dtype; they are the same)."""
    if activation not in ACTS:
        raise ValueError(f"activation={activation!r} is invalid for PEER's Triton kernel: allowed are gelu, relu")
    T, D = x_TD.shape
    A = idx_TA.shape[1]
    x_TD, u_ND, v_ND = (t.contiguous() for t in (x_TD.to(u_ND.dtype), u_ND, v_ND))
    idx_TA, gate_TA = idx_TA.contiguous(), gate_TA.float().contiguous()
    y_TD = torch.empty(T, D, dtype=v_ND.dtype, device=x_TD.device)
    if T:
        _peer_experts_kernel[(T,)](x_TD, u_ND, v_ND, idx_TA, gate_TA, y_TD, A, D, x_TD.stride(0), u_ND.stride(0),
                                   v_ND.stride(0), y_TD.stride(0), ACT=ACTS[activation], BLOCK_A=block_a,
                                   BLOCK_D=triton.next_power_of_2(D))
    return y_TD


class _PeerExpertsTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_TD, u_ND, v_ND, idx_TA, gate_TA, activation: str):
        ctx.save_for_backward(x_TD, u_ND, v_ND, idx_TA, gate_TA)
        ctx.activation = activation
        return peer_experts_forward(x_TD, u_ND, v_ND, idx_TA, gate_TA, activation)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy_TD):
        from moebench.kernels.peer_experts import peer_experts

        saved = ctx.saved_tensors
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(need) for t, need in zip(saved, ctx.needs_input_grad, strict=False)]
            y_TD = peer_experts(*leaves[:3], leaves[3], leaves[4], ctx.activation, impl="torch")
            wanted = [t for t in leaves if t.requires_grad]
            grads = iter(torch.autograd.grad(y_TD, wanted, dy_TD, allow_unused=True))
        return (*[next(grads) if t.requires_grad else None for t in leaves], None)


def peer_experts_triton(x_TD, u_ND, v_ND, idx_TA, gate_TA, activation: str) -> torch.Tensor:
    """The fused forward, differentiable through the torch backward described above."""
    return _PeerExpertsTriton.apply(x_TD, u_ND, v_ND, idx_TA, gate_TA, activation)
