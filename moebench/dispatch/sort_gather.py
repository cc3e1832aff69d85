"""Sort + gather, one expert at a time: sort the kept assignments by expert, then for each expert
gather its tokens, run its GEMM pair, scale by the combine weights and add into the float32 output:

    for e:  rows   = kept assignments of expert e (a contiguous slice of the sorted order)
            out_nD = w_out[e] @ act(w_in[e] @ x[token_rows])
            y_TD[token_rows] += weight_rows * out_nD          (float32, like the loop)

Why one expert at a time: gathering all T*K rows first and combining them last streams [T*K, D]
buffers through memory (134 MB in fp32 at K=32), while one expert's rows, hidden activations and
the [T, D] output stay in cache; the per-expert GEMMs are the same either way. Without autograd:
  - bf16 on CPU: each expert through moebench.dispatch.onednn_ffn (weights prepacked once; swiglu as one
    GEMM plus a C pass, gelu/relu as GEMM post-ops where F >= 2D), then one C pass (moebench.kernels.
    dispatch_native.combine_rows) sums each token's weighted rows in float32 and rounds once: no float32
    [T, D] buffer, but every expert's output is kept until then (S*D bf16 values, K times the size of x);
  - otherwise the activation runs in place on the GEMM output (float32 swiglu on CPU in one C pass) and
    the combine widens, weights and adds each expert's rows into the float32 output (one C pass on CPU);
  - without a C compiler, torch does each of those passes.
With autograd the same math runs out of place so every saved tensor stays valid.
The cost: about 8 torch ops per expert (1000 at E=128). On an idle CPU each costs microseconds; on
a machine with more runnable threads than cores every parallel op can wait a scheduler time slice
for its second thread, and this backend slows down far more than the padded one (a few large
ops). benchmarks/vs_transformers.py --threads 1 measures it free of that effect.

One host sync (the per-expert counts) decides the slice boundaries.
Axis legend: T tokens, D model dim, E experts, A assignments, S sorted kept assignments,
n assignments of one expert, I = rows of w_in, F expert hidden dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from moebench.dispatch import onednn_ffn
from moebench.dispatch.common import activate, expert_rows, ffn
from moebench.kernels import dispatch_native
from moebench.measure.code_path import note
from moebench.measure.phases import phase
from moebench.routing.assignment import Routing


def sort_by_expert(routing: Routing) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the kept assignments ordered by expert, and the per-expert counts [E]."""
    E = routing.n_experts
    # Dropped assignments get key E so they sort last and fall outside every expert's slice.
    key_A = torch.where(routing.kept_A, routing.expert_A, torch.full_like(routing.expert_A, E))
    order_A = torch.argsort(key_A, stable=True)
    counts_E = torch.bincount(key_A, minlength=E + 1)[:E]
    return order_A, counts_E


def kept_by_expert(routing: Routing) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(order_S, token_S, counts_E): the kept assignments in expert order, their tokens, and the
    per-expert counts. One host sync: how many assignments were kept."""
    order_A, counts_E = sort_by_expert(routing)
    order_S = order_A[:int(counts_E.sum())]
    return order_S, routing.token_A[order_S], counts_E


def activate_inplace(h_nI: torch.Tensor, activation: str) -> torch.Tensor:
    """activate(h) computed in h's own storage (no autograd): for swiglu the result is the gate half
    of h, a strided view the next GEMM reads directly (float32 on CPU: one C pass, not two of torch's)."""
    if native_swiglu_f32(h_nI, activation):
        return dispatch_native.swiglu_f32_(h_nI)
    if activation == "swiglu":
        gate_nF, up_nF = h_nI.chunk(2, dim=-1)
        return F.silu(gate_nF, inplace=True).mul_(up_nF)
    if activation == "relu":
        return h_nI.relu_()
    return activate(h_nI, activation)  # gelu has no in-place form


def native_swiglu_f32(h_nI: torch.Tensor, activation: str) -> bool:
    """Whether activate_inplace runs the C swiglu pass on h (float32 on CPU, where the kernels built)."""
    return (activation == "swiglu" and h_nI.dtype == torch.float32 and h_nI.device.type == "cpu"
            and h_nI.is_contiguous() and dispatch_native.available())


def run_sort_gather(x_TD: torch.Tensor, routing: Routing, w_in_EID: torch.Tensor, w_out_EDF: torch.Tensor,
                    activation: str) -> torch.Tensor:
    tracked = torch.is_grad_enabled() and any(
        t.requires_grad for t in (x_TD, w_in_EID, w_out_EDF, routing.weight_A))
    if not tracked and x_TD.device.type == "cpu" and dispatch_native.available():
        note("sort", "native_c")
        with phase("dispatch"):  # one C pass (a counting sort) for the torch ops below
            token_S, weight_S, counts = dispatch_native.sort_by_expert(
                routing.expert_A, routing.kept_A, routing.token_A, routing.weight_A, routing.n_experts)
        return _untracked(x_TD, token_S, weight_S[:, None], counts, w_in_EID, w_out_EDF, activation).to(x_TD.dtype)
    note("sort", "torch")
    with phase("dispatch"):
        order_S, token_S, counts_E = kept_by_expert(routing)
        counts = counts_E.tolist()
        weight_S1 = routing.weight_A[order_S, None].float()
    if not tracked:
        return _untracked(x_TD, token_S, weight_S1, counts, w_in_EID, w_out_EDF, activation).to(x_TD.dtype)
    for step in ("experts", activation, "combine"):
        note(step, "torch")
    y_TD = torch.zeros(x_TD.shape, dtype=torch.float32, device=x_TD.device)
    for e, rows in expert_rows(counts):
        with phase("dispatch"):
            token_n = token_S[rows]
            x_nD = x_TD.index_select(0, token_n)
        with phase("experts"):
            out_nD = ffn(x_nD, w_in_EID[e], w_out_EDF[e], activation)
        with phase("combine"):
            y_TD = y_TD.index_add_(0, token_n, out_nD * weight_S1[rows])  # float32 (promotes bf16 / fp16)
    return y_TD.to(x_TD.dtype)


def _untracked(x_TD: torch.Tensor, token_S: torch.Tensor, weight_S1: torch.Tensor, counts: list[int],
               w_in_EID: torch.Tensor, w_out_EDF: torch.Tensor, activation: str) -> torch.Tensor:
    """The same loop with nothing to differentiate: every intermediate lives in buffers sized for the
    largest expert, allocated once per call (fresh multi-MB allocations page-fault on every call),
    the activation runs fused into the GEMMs on CPU (onednn_ffn) or else in place. On CPU with the C
    kernels (kernels.dispatch_native) the combine widens, weights and adds in one pass; otherwise the
    combine weight scales whichever of act [n, F] (in x's dtype, one extra rounding) or out [n, D]
    (float32) is smaller."""
    n_max, D, I = max(counts, default=0), x_TD.shape[1], w_in_EID.shape[1]
    cpu = x_TD.device.type == "cpu"
    native = cpu and x_TD.dtype in dispatch_native.DTYPES and dispatch_native.available()
    # On CPU the activation runs inside the GEMMs where torch's oneDNN post-ops allow (onednn_ffn).
    fused = (onednn_ffn.expert_weights(w_in_EID, w_out_EDF, activation)
             if cpu and onednn_ffn.available(x_TD, w_in_EID, w_out_EDF, activation) else None)
    if fused is not None and native:
        return _fused_native(x_TD, token_S, weight_S1.view(-1), counts, fused, w_out_EDF.shape[2])
    note("experts", "onednn" if fused is not None else "torch")  # fused_ffn notes its activation
    note("combine", "native_c" if native else "torch")
    y_TD = torch.zeros(x_TD.shape, dtype=torch.float32, device=x_TD.device)
    x_buf = x_TD.new_empty(n_max, D)
    h_buf = x_TD.new_empty(0 if fused is not None else n_max, I)
    if fused is None:
        note(activation, "native_c" if native_swiglu_f32(h_buf, activation) else "torch")
    out_buf = x_TD.new_empty(n_max, D)
    f32_buf = out_buf if x_TD.dtype == torch.float32 or native else torch.empty(n_max, D, device=x_TD.device)
    scale_act = w_out_EDF.shape[2] <= D and not native
    # In x's dtype: an in-place bf16 *= float32 runs TensorIterator's casting loop, 8x slower here.
    act_weight_S1 = weight_S1.to(x_TD.dtype) if scale_act else weight_S1
    for e, rows in expert_rows(counts):
        n = rows.stop - rows.start
        with phase("dispatch"):
            token_n = token_S[rows]
            x_nD = torch.index_select(x_TD, 0, token_n, out=x_buf[:n])
        with phase("experts"):
            if fused is not None:
                out_nD = onednn_ffn.fused_ffn(x_nD, fused[e], act_weight_S1[rows] if scale_act else None)
            else:
                act_nF = activate_inplace(torch.mm(x_nD, w_in_EID[e].t(), out=h_buf[:n]), activation)
                if scale_act:
                    act_nF = act_nF.mul_(act_weight_S1[rows])
                out_nD = torch.mm(act_nF, w_out_EDF[e].t(), out=out_buf[:n])
        with phase("combine"):
            if native:
                dispatch_native.combine_add(y_TD, out_nD, token_n, weight_S1[rows, 0])
                continue
            if not scale_act:  # scale and widen to float32 in one pass
                out_nD = torch.mul(out_nD, weight_S1[rows], out=f32_buf[:n])
            elif out_nD.dtype != torch.float32:
                out_nD = f32_buf[:n].copy_(out_nD)
            y_TD.index_add_(0, token_n, out_nD)
    return y_TD


def _fused_native(x_TD: torch.Tensor, token_S: torch.Tensor, weight_S: torch.Tensor, counts: list[int],
                  fused: list[onednn_ffn.ExpertWeights], F: int) -> torch.Tensor:
    """The fused CPU path: each expert's packed GEMMs (and the C swiglu pass) into an output of its own,
    then one C pass sums every token's weighted rows in float32 and rounds once to x's dtype (no
    float32 [T, D] buffer, no per-expert combine)."""
    n_max = max(counts, default=0)
    x_buf, act_buf = x_TD.new_empty(n_max, x_TD.shape[1]), x_TD.new_empty(n_max, F)
    outs = []
    note("combine", "native_c")
    for e, rows in expert_rows(counts):
        n = rows.stop - rows.start
        with phase("dispatch"):
            x_nD = torch.index_select(x_TD, 0, token_S[rows], out=x_buf[:n])
        with phase("experts"):
            outs.append(onednn_ffn.fused_ffn(x_nD, fused[e], act_buf=act_buf[:n]))
    with phase("combine"):
        return dispatch_native.combine_rows(outs, [n for n in counts if n], token_S, weight_S, *x_TD.shape,
                                            x_TD.dtype)
