"""One expert's FFN on CPU for inference: the activation fused into the GEMMs (oneDNN post-ops),
the weights reordered once into oneDNN's blocked layout and kept while they do not change.

    swiglu:      h_nI   = x_nD @ w_in_ID^T                    one GEMM over gate and up together, then
                 act_nF = silu(h_nI[:, :F]) * h_nI[:, F:]     one C pass (kernels.dispatch_native)
      or, without a C compiler:
                 g_nF   = silu(x_nD @ w_gate_FD^T)           one GEMM, "swish" post-op
                 act_nF = (x_nD @ w_up_FD^T) * g_nF           one GEMM, binary "mul" post-op
    gelu, relu:  act_nF = act(x_nD @ w_in_FD^T)               one GEMM, unary post-op
    out_nD = act_nF @ w_out_DF^T                              one GEMM

Why fuse: the unfused FFN writes h [n, 2F], reads it back for the activation and writes act [n, F];
with bf16 on AMX (2 cores, torch 2.13) that pass took as long as a GEMM (0.76 ms against 0.65 ms for
x @ w_in^T at n=512, D=512, F=1408). A post-op applies the activation to each output tile while it
is still in registers, but swiglu's product pairs two column halves, which a post-op cannot: it needs
two half-width GEMMs (each less efficient than one of full width) and a binary post-op. The C pass
after one full-width GEMM measured faster than both (per expert at those shapes: 655 + 200 us against
385 + 100 + 385 + 90 us for the post-op pair, 2 threads).
Why pack: a plain matmul reorders its weight into the blocked layout on every call (a full read and
write of the weight); per expert that cost about 10% of the GEMM in bf16 and fp32 alike. Packing once
and reusing is what CPU inference stacks do (inductor's freezing, oneDNN graph). The packed copies live
in a cache keyed by the weight Parameter and dropped with it; an entry is rebuilt when the weight's
storage or version changes (an optimizer step, a load_state_dict), and weights larger than PACK_LIMIT
are not packed (their copy would double a multi-GB layer's memory): those run fused but unpacked.
A write through `weight.data` bypasses the version counter and so is not seen: call
clear_packed_weights() after one (optimizers, load_state_dict and torch.no_grad() writes are seen).

torch exposes these only as the private ops inductor's CPU freezing pass uses
(torch.ops.mkldnn._linear_pointwise, torch.ops.mkldnn._reorder_linear_weight); `available` probes them
once per dtype and activation against the plain math, so a torch without them, or with other
semantics, falls back to the plain FFN. fp32 is not routed here: on this machine the fused, packed fp32
path ran 3-8% slower than MKL's sgemm behind torch.mm plus the in-place activation (G=1, 1 thread),
whose pass is cheap beside fp32 GEMMs. The out-projection was also tried in row blocks (oneDNN's
unpacked bf16 kernel dips at 448-1024 rows): no gain once packed.
No autograd: callers use this only when nothing needs a gradient.
Axis legend: n rows (assignments of one expert), D model dim, F expert hidden dim, E experts,
I = rows of w_in.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch._subclasses.fake_tensor import unset_fake_temporarily
from torch.utils.weak import WeakIdKeyDictionary

from moebench.dispatch.common import ffn
from moebench.kernels import dispatch_native
from moebench.measure.code_path import note

DTYPES = (torch.bfloat16,)
# Unary post-op name and algorithm per activation (gelu: "none" is the erf form, F.gelu's default).
_UNARY = {"relu": ("relu", ""), "gelu": ("gelu", "none")}
# Post-op fusion only for experts at least this many times wider than the model (F >= ratio * D).
# Measured for swiglu as the post-op pair on this project's 2-core AMX machine, bf16, 2 threads,
# T=2048, D=512: fused 16 ms against 20 ms unfused at F=1408, but 27 against 23 at F=704 and 38 against
# 32 at F=352: below, the unfused GEMM of both halves at once plus a short activation pass beats two
# half-width GEMMs with post-ops. swiglu with the C pass has no such limit: it measured as fast or faster
# at every width (vs_transformers --quick, whole layer.experts call, against this limit: F=704 24 against
# 31 ms, F=352 41 against 41, F=176 49 against 62). gelu and relu keep the limit (not measured below it).
MIN_F_OVER_D = 2.0
PACK_LIMIT = 512 * 2**20  # bytes of one weight tensor [E, ., .] above which it is not packed
_ROW_HINT = 512  # oneDNN picks a packed layout for a typical row count; any count runs with it


def _linear():
    return getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)


def available(x_TD: torch.Tensor, w_in_EID: torch.Tensor, w_out_EDF: torch.Tensor, activation: str) -> bool:
    """Whether these operands can take the fused path here (cheap; the op probe runs once per case)."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x_TD, w_in_EID, w_out_EDF)):
        return False
    if x_TD.device.type != "cpu" or x_TD.dtype not in DTYPES:
        return False
    if not (w_in_EID.dtype == w_out_EDF.dtype == x_TD.dtype) or w_in_EID.device.type != "cpu":
        return False
    if activation != "swiglu" and activation not in _UNARY:
        return False
    if w_out_EDF.shape[2] < MIN_F_OVER_D * x_TD.shape[-1] and (activation != "swiglu" or _split_gate_up()):
        return False
    return _probe(x_TD.dtype, activation)


@functools.cache
def _probe(dtype: torch.dtype, activation: str) -> bool:
    """The fused ops exist and agree with the plain FFN on small operands, packed or not (tried once)."""
    if _linear() is None or not torch.backends.mkldnn.is_available():
        return False
    # cached for the process: tried on real tensors even when first asked under a fake-tensor mode (the
    # host-sync probe), where the comparison below could not read its result
    with unset_fake_temporarily():
        return _agrees(dtype, activation)


def _agrees(dtype: torch.dtype, activation: str) -> bool:
    gen = torch.Generator().manual_seed(0)
    Fh = 24
    x_nD = torch.randn(5, 16, generator=gen).to(dtype)
    w_in_EID = torch.randn(1, 2 * Fh if activation == "swiglu" else Fh, 16, generator=gen).to(dtype)
    w_out_EDF = torch.randn(1, 16, Fh, generator=gen).to(dtype)
    want = ffn(x_nD.float(), w_in_EID[0].float(), w_out_EDF[0].float(), activation)
    tol = 3e-2 * want.abs().max()
    try:
        with torch.inference_mode(False), torch.no_grad():
            for pack in (False, True):
                weights = _make_weights(w_in_EID, w_out_EDF, activation, pack, _split_gate_up())[0]
                if ((fused_ffn(x_nD, weights).float() - want).abs().max() > tol).item():
                    return False
    except (RuntimeError, NotImplementedError, AttributeError):
        return False
    return True


@dataclass(frozen=True)
class ExpertWeights:
    """One expert's weights as fused_ffn takes them: plain contiguous views or oneDNN-packed tensors."""

    activation: str
    w_a: torch.Tensor  # swiglu split (no C pass): gate rows [F, D]; else all of w_in [I, D]
    w_b: torch.Tensor | None  # swiglu split: up rows [F, D]
    w_out: torch.Tensor  # [D, F]


def _split_gate_up() -> bool:
    """swiglu as two post-op GEMMs (True) or one GEMM and the C pass (False, where it compiled)."""
    return not dispatch_native.available()


def _make_weights(w_in_EID: torch.Tensor, w_out_EDF: torch.Tensor, activation: str,
                  pack: bool, split_gate_up: bool) -> list[ExpertWeights]:
    def prep(w: torch.Tensor) -> torch.Tensor:
        w = w.contiguous()
        return torch.ops.mkldnn._reorder_linear_weight(w, _ROW_HINT) if pack else w

    experts = []
    for w_in_ID, w_out_DF in zip(w_in_EID, w_out_EDF, strict=True):
        if activation == "swiglu" and split_gate_up:
            w_gate_FD, w_up_FD = w_in_ID.chunk(2, dim=0)
            experts.append(ExpertWeights(activation, prep(w_gate_FD), prep(w_up_FD), prep(w_out_DF)))
        else:
            experts.append(ExpertWeights(activation, prep(w_in_ID), None, prep(w_out_DF)))
    return experts


# weight Parameter w_in_EID -> (what the entry was made from, its per-expert packed weights)
_PACKED = WeakIdKeyDictionary()


def expert_weights(w_in_EID: torch.Tensor, w_out_EDF: torch.Tensor, activation: str) -> list[ExpertWeights]:
    """Per expert, the weights fused_ffn takes: packed and cached where allowed, else plain views."""
    split = _split_gate_up()
    if max(w_in_EID.nbytes, w_out_EDF.nbytes) > PACK_LIMIT:
        return _make_weights(w_in_EID, w_out_EDF, activation, pack=False, split_gate_up=split)
    made_from = tuple((w.data_ptr(), w._version, w.shape, w.stride(), w.dtype) for w in (w_in_EID, w_out_EDF))
    made_from += (activation, split)
    entry = _PACKED.get(w_in_EID)
    if entry is None or entry[0] != made_from:
        # Packed tensors are plain buffers, never saved for backward: make them outside inference mode
        # so a later call that is not in inference mode may use them.
        with torch.inference_mode(False), torch.no_grad():
            entry = (made_from, _make_weights(w_in_EID, w_out_EDF, activation, pack=True, split_gate_up=split))
        _PACKED[w_in_EID] = entry
    return entry[1]


def clear_packed_weights() -> None:
    """Drop every cached packed copy (after writing expert weights through .data)."""
    _PACKED.clear()


def fused_ffn(x_nD: torch.Tensor, weights: ExpertWeights, row_scale_n1: torch.Tensor | None = None,
              act_buf: torch.Tensor | None = None) -> torch.Tensor:
    """w_out @ act(w_in @ x) for one expert, optionally times row_scale (applied to act, in x's dtype).
    act_buf: [n, F] storage the C swiglu pass may write act into (else it allocates)."""
    linear = _linear()
    x_nD = x_nD.contiguous()
    note("experts", "onednn")
    note(weights.activation, "native_c" if weights.activation == "swiglu" and weights.w_b is None else "onednn")
    if weights.activation == "swiglu" and weights.w_b is None:
        act_nF = dispatch_native.swiglu_bf16(linear(x_nD, weights.w_a, None, "none", [], ""), act_buf)
    elif weights.activation == "swiglu":
        g_nF = linear(x_nD, weights.w_a, None, "swish", [], "")
        act_nF = linear.binary(x_nD, g_nF, weights.w_b, None, "mul")
    else:
        attr, algorithm = _UNARY[weights.activation]
        act_nF = linear(x_nD, weights.w_a, None, attr, [], algorithm)
    if row_scale_n1 is not None:
        act_nF.mul_(row_scale_n1)
    return linear(act_nF, weights.w_out, None, "none", [], "")


__all__ = ["DTYPES", "MIN_F_OVER_D", "PACK_LIMIT", "ExpertWeights", "available", "clear_packed_weights",
           "expert_weights", "fused_ffn"]
