"""Grouped GEMM: sort the kept assignments by expert, gather their tokens once, then run ONE grouped
GEMM for w_in and ONE for w_out over the jagged expert groups (torch grouped_mm, int32 offsets):

    h_SI = x_SD[rows of expert e] @ w_in_EID[e].T    for every e in one call
    out_SD = act(h_SI)[rows of expert e] @ w_out_EDF[e].T

and scale + scatter-add back in float32 like the loop backend.

torch's grouped_mm is missing in older torch (on CPU too in some) and, where present, needs every row stride of its
operands, outputs and gradients to be a multiple of 16 bytes, i.e. D, I and F times the element size
(measured on torch 2.13 CPU, fp32 / bf16 / fp16 alike: "strides should be multiple of 16 bytes",
raised by the forward or only by the backward; fp32 with I=6 runs forward, then fails). Where it
cannot run, the same sorted buffer goes through one GEMM pair per expert instead (sort_gather's
loop). The choice is made once per call from shapes, dtype and device (plus a probe of CPU support,
once per process and dtype), never by try/except around the call: a backward that will fail cannot
be caught at forward time.

Host syncs: one, the number of kept assignments (the gathered buffer's length); the fallback also
reads the per-expert counts. On CUDA, sort_by_expert's bincount syncs too, and grouped_mm is used
only where torch has a real grouped kernel (bf16 on SM90/SM100); not yet run on a GPU here.
Axis legend: T tokens, D model dim, F expert hidden dim, E experts, I = rows of w_in,
A assignments, S sorted kept assignments.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from moebench.dispatch.common import activate, expert_rows, ffn
from moebench.dispatch.sort_gather import kept_by_expert
from moebench.measure.code_path import note
from moebench.measure.phases import phase
from moebench.routing.assignment import Routing

# Older torch has only the private name, or neither (None).
_GROUPED_MM = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_ALIGN_BYTES = 16


def grouped_mm_usable(x_TD: torch.Tensor, w_in_EID: torch.Tensor, w_out_EDF: torch.Tensor) -> bool:
    """Whether torch grouped_mm can run these operands, forward and backward (a cheap, sync-free test)."""
    if _GROUPED_MM is None:
        return False
    if x_TD.dtype not in _DTYPES or w_in_EID.dtype != x_TD.dtype or w_out_EDF.dtype != x_TD.dtype:
        return False
    if x_TD.device.type not in ("cpu", "cuda") or not (w_in_EID.device == w_out_EDF.device == x_TD.device):
        return False
    if x_TD.device.type == "cuda":
        # The grouped kernel is CUTLASS bf16 on SM90/SM100 only; elsewhere torch loops over the groups
        # itself (after copying offs to the host), or in older versions refuses: use our loop then.
        if x_TD.dtype != torch.bfloat16 or torch.cuda.get_device_capability(x_TD.device)[0] not in (9, 10):
            return False
    elif not _runs_on_cpu(x_TD.dtype):
        return False
    # The weights go in as transposed views ([E, D, I] column-major, the layout the CUDA kernel
    # wants), so they must be contiguous and start on a 16-byte boundary.
    if not (w_in_EID.is_contiguous() and w_out_EDF.is_contiguous()):
        return False
    if w_in_EID.data_ptr() % _ALIGN_BYTES or w_out_EDF.data_ptr() % _ALIGN_BYTES:
        return False
    D, I, Fh = x_TD.shape[-1], w_in_EID.shape[1], w_out_EDF.shape[2]
    return all((n * x_TD.element_size()) % _ALIGN_BYTES == 0 for n in (D, I, Fh))


@functools.cache
def _runs_on_cpu(dtype: torch.dtype) -> bool:
    """Whether this torch has a CPU grouped_mm for dtype, forward and backward (tried once, on 16-byte
    aligned toy operands: CPU support arrived later than CUDA's)."""
    # The first call may come under no_grad / inference_mode; the probe needs autograd regardless.
    with torch.inference_mode(False), torch.enable_grad():
        x_SD = torch.ones(3, 8, dtype=dtype, requires_grad=True)
        w_EDI = torch.ones(2, 8, 8, dtype=dtype, requires_grad=True)
        try:
            out = _GROUPED_MM(x_SD, w_EDI, offs=torch.tensor([1, 3], dtype=torch.int32))
            (out.float() * torch.ones(3, 8)).sum().backward()
        except (RuntimeError, NotImplementedError):
            return False
    return bool(torch.all(out == 8).item())


def _per_expert(x_SD: torch.Tensor, counts: list[int], w_in_EID: torch.Tensor, w_out_EDF: torch.Tensor,
                activation: str) -> torch.Tensor:
    """The fallback: one GEMM pair per expert slice of the sorted buffer."""
    outs = [ffn(x_SD[rows], w_in_EID[e], w_out_EDF[e], activation) for e, rows in expert_rows(counts)]
    return torch.cat(outs) if outs else x_SD.new_zeros(0, w_out_EDF.shape[1])


def run_grouped_mm(x_TD: torch.Tensor, routing: Routing, w_in_EID: torch.Tensor, w_out_EDF: torch.Tensor,
                   activation: str) -> torch.Tensor:
    for step in ("sort", "experts", activation, "combine"):
        note(step, "torch")
    with phase("dispatch"):
        order_S, token_S, counts_E = kept_by_expert(routing)  # the host sync: the gathered buffer's length
        x_SD = x_TD[token_S]  # the one gather: expert e's rows are contiguous, in assignment order
    with phase("experts"):
        if grouped_mm_usable(x_TD, w_in_EID, w_out_EDF):
            offs_E = torch.cumsum(counts_E, 0, dtype=torch.int32)  # end row of each expert's group
            h_SI = _GROUPED_MM(x_SD, w_in_EID.transpose(1, 2), offs=offs_E)
            out_SD = _GROUPED_MM(activate(h_SI, activation), w_out_EDF.transpose(1, 2), offs=offs_E)
        else:
            out_SD = _per_expert(x_SD, counts_E.tolist(), w_in_EID, w_out_EDF, activation)
    with phase("combine"):
        y_TD = torch.zeros(x_TD.shape, dtype=torch.float32, device=x_TD.device)
        y_TD = y_TD.index_add(0, token_S, out_SD.float() * routing.weight_A[order_S, None].float())
        return y_TD.to(x_TD.dtype)
