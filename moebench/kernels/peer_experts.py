"""PEER's gather + expert step without materialising the gathered experts [T, A, D].

    h_TA[t, a] = u[idx_TA[t, a]] . x_t                                  gather-dot
    y_TD[t]    = sum_a act(h_TA[t, a]) * g_TA[t, a] * v[idx_TA[t, a]]  weighted gather-sum

The weighted gather-sum is torch's embedding_bag (mode "sum", per_sample_weights): one fused kernel
that reads each v row once and never writes [T, A, D]; its autograd gives dv and dg.
The gather-dot has no such op. `impl="torch"` runs it in chunks of C tokens (gather [C, A, D] rows,
one bmm): its extra memory is C*A*D elements, forward and backward alike. `impl="compile"` runs the
forward as a torch.compile'd (inductor) fused loop that reads each u row once and writes only h;
compiled once per process (dynamic shapes; the first call costs tens of seconds on 2 cores, later
processes reuse inductor's on-disk cache). `impl="native"` (CPU, float32) runs it as a C loop that
prefetches the next rows (moebench.kernels.peer_native.gather_dot). `impl="triton"` (CUDA, or the interpreter) runs the
whole step as one Triton kernel (moebench.kernels.peer_triton). The backward is eager torch:
    dx_t = sum_a dh[t, a] u[idx[t, a]]        (embedding_bag again)
    du[idx[t, a]] += dh[t, a] x_t            (index_add_, C tokens at a time)
Axis legend: T tokens, D model dim, N experts, A = H*K retrieved experts per token, C chunk of tokens.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import register_flop_formula

from moebench.dispatch.common import activate
from moebench.measure.code_path import note

IMPLS = ("torch", "compile", "triton", "native")
_CODE = {"torch": "torch", "compile": "torch_compile", "native": "native_c"}  # each impl's code_path name
CHUNK_BYTES = 32 * 2**20  # default gather chunk: C*A*D*itemsize stays under this


@register_flop_formula([torch.ops.aten._embedding_bag, torch.ops.aten._embedding_bag_forward_only])
def _embedding_bag_flops(weight_shape, indices_shape, *args, out_shape=None, **kwargs) -> int:
    """For torch's FlopCounterMode, which has no formula for embedding_bag: the weighted sum is one
    multiply-add (2 FLOPs) per gathered element, the plain sum one add; the same count as the matmul
    it replaces here, so counted FLOPs stay comparable with moebench.accounting."""
    per_sample_weights = args[4] if len(args) > 4 else kwargs.get("per_sample_weights")
    return (2 if per_sample_weights is not None else 1) * indices_shape.numel() * weight_shape[1]


def _triton_code() -> str:
    from moebench.dispatch.triton import interpreter_on

    return "triton_interpreter" if interpreter_on() else "triton"


def chunk_tokens_for(A: int, D: int, itemsize: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Tokens per gather chunk so that one chunk of gathered rows [C, A, D] fits in chunk_bytes."""
    return max(1, chunk_bytes // max(1, A * D * itemsize))


def _gather_dot_fused(x_TD: torch.Tensor, u_ND: torch.Tensor, idx_TA: torch.Tensor) -> torch.Tensor:
    # Written as the math; inductor turns it into one loop with the gather inside the reduction.
    return (u_ND[idx_TA] * x_TD[:, None, :]).sum(-1)


@functools.cache
def _compiled_gather_dot():
    return torch.compile(_gather_dot_fused, dynamic=True)


def _gather_dot_chunked(x_TD: torch.Tensor, u_ND: torch.Tensor, idx_TA: torch.Tensor, C: int) -> torch.Tensor:
    h_TA = u_ND.new_empty(idx_TA.shape)
    for s in range(0, x_TD.shape[0], C):
        u_CAD = F.embedding(idx_TA[s:s + C], u_ND)
        torch.bmm(u_CAD, x_TD[s:s + C, :, None], out=h_TA[s:s + C, :, None])
    return h_TA


class GatherDot(torch.autograd.Function):
    """h_TA = u[idx] . x with the chunked (compiled, native) forward and the eager backward above."""

    @staticmethod
    def forward(ctx, x_TD, u_ND, idx_TA, chunk_tokens: int, impl: str):
        ctx.save_for_backward(x_TD, u_ND, idx_TA)
        ctx.chunk_tokens = chunk_tokens
        if impl == "compile":
            return _compiled_gather_dot()(x_TD, u_ND, idx_TA)
        if impl == "native":
            from moebench.kernels import peer_native

            return peer_native.gather_dot(x_TD.contiguous(), u_ND.contiguous(), idx_TA.contiguous())
        return _gather_dot_chunked(x_TD, u_ND, idx_TA, chunk_tokens)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dh_TA):
        x_TD, u_ND, idx_TA = ctx.saved_tensors
        dh_TA = dh_TA.to(u_ND.dtype)
        dx_TD = du_ND = None
        if ctx.needs_input_grad[0]:
            dx_TD = F.embedding_bag(idx_TA, u_ND, per_sample_weights=dh_TA, mode="sum")
        if ctx.needs_input_grad[1]:
            du_ND, C = torch.zeros_like(u_ND), ctx.chunk_tokens
            for s in range(0, x_TD.shape[0], C):
                outer_CAD = dh_TA[s:s + C, :, None] * x_TD[s:s + C, None, :]
                du_ND.index_add_(0, idx_TA[s:s + C].reshape(-1), outer_CAD.reshape(-1, x_TD.shape[1]))
        return dx_TD, du_ND, None, None, None


def peer_experts(x_TD: torch.Tensor, u_ND: torch.Tensor, v_ND: torch.Tensor, idx_TA: torch.Tensor,
                 gate_TA: torch.Tensor, activation: str, *, impl: str = "torch",
                 chunk_tokens: int | None = None) -> torch.Tensor:
    """y_TD = sum_a act(u[idx] . x) * g * v[idx]; h, act and g in float32, gathers in u/v's dtype."""
    if impl not in IMPLS:
        raise ValueError(f"PEER experts impl={impl!r} is invalid: allowed values are {', '.join(IMPLS)}")
    note("gather_experts", _CODE[impl] if impl != "triton" else _triton_code())
    if impl == "triton":
        from moebench.kernels.peer_triton import peer_experts_triton  # imports triton: only when asked

        return peer_experts_triton(x_TD, u_ND, v_ND, idx_TA, gate_TA, activation)
    C = chunk_tokens or chunk_tokens_for(idx_TA.shape[1], x_TD.shape[1], u_ND.element_size())
    h_TA = GatherDot.apply(x_TD, u_ND, idx_TA, C, impl)
    a_TA = activate(h_TA.float(), activation) * gate_TA
    return F.embedding_bag(idx_TA, v_ND, per_sample_weights=a_TA.to(v_ND.dtype), mode="sum")
