"""Triton: sort the kept assignments by expert, then one fused grouped-GEMM kernel per weight that
gathers the token rows by index itself and fuses the activation and the combine weight
(moebench.kernels.grouped_triton), then a float32 scatter-add back like the loop backend.

Where it runs: CUDA tensors, or CPU tensors under the Triton interpreter (TRITON_INTERPRET=1 set before
triton is first imported: slow, for tests). `TritonBackend.check` refuses a spec with a ValueError when
triton is not installed, or when there is no CUDA device and the interpreter is not enabled; `run`
refuses CPU tensors without the interpreter the same way.
Forward only in Triton: the autograd.Function's backward recomputes the layer with the grouped_mm
backend in torch and differentiates that (same math), so training works but its backward is torch's.
Host syncs: one, the number of kept assignments. Not yet run on a GPU here.
Axis legend: T tokens, D model dim, F expert hidden dim, E experts, I = rows of w_in,
A assignments, S sorted kept assignments.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os

import torch

from moebench.dispatch.common import Backend
from moebench.dispatch.grouped_mm import run_grouped_mm
from moebench.dispatch.sort_gather import kept_by_expert
from moebench.measure.code_path import note
from moebench.measure.phases import phase
from moebench.routing.assignment import Routing
from moebench.spec import LayerSpec


def interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_problem(device: torch.device | None = None) -> str | None:
    """Why the triton backend cannot run here (on `device`, or on this machine), or None."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install 'moebench[gpu]')"
    on_cpu = (device.type == "cpu") if device is not None else not torch.cuda.is_available()
    if on_cpu and not interpreter_on():
        return ("it needs CUDA tensors, or TRITON_INTERPRET=1 (the Triton interpreter, for tests on CPU) "
                "set before triton is imported")
    return None


@dataclasses.dataclass(frozen=True)
class TritonBackend(Backend):
    def check(self, spec: LayerSpec) -> None:
        super().check(spec)
        problem = triton_problem()
        if problem:
            raise ValueError(f"LayerSpec.backend='triton' cannot run here: {problem}; choose another backend")


def _forward(x_TD: torch.Tensor, routing: Routing, w_in_EID: torch.Tensor, w_out_EDF: torch.Tensor,
             activation: str) -> torch.Tensor:
    from moebench.kernels.grouped_triton import grouped_ffn  # imports triton: only when run

    kernels = "triton_interpreter" if interpreter_on() else "triton"
    for step, impl in (("sort", "torch"), ("experts", kernels), (activation, kernels), ("combine", "torch")):
        note(step, impl)
    with phase("dispatch"):
        order_S, token_S, counts_E = kept_by_expert(routing)  # the host sync: the sorted buffer's length
    with phase("experts"):
        out_SD = grouped_ffn(x_TD, token_S, routing.weight_A[order_S], counts_E, w_in_EID, w_out_EDF, activation)
    with phase("combine"):
        y_TD = torch.zeros(x_TD.shape, dtype=torch.float32, device=x_TD.device)
        return y_TD.index_add(0, token_S, out_SD).to(x_TD.dtype)


class _TritonExperts(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_TD, w_in_EID, w_out_EDF, weight_A, routing: Routing, activation: str):
        ctx.save_for_backward(x_TD, w_in_EID, w_out_EDF, weight_A)
        ctx.routing, ctx.activation = routing, activation
        return _forward(x_TD, routing, w_in_EID, w_out_EDF, activation)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy_TD):
        leaves = [t.detach().requires_grad_(need) for t, need in zip(ctx.saved_tensors, ctx.needs_input_grad,
                                                                    strict=False)]
        with torch.enable_grad():
            routing = dataclasses.replace(ctx.routing, weight_A=leaves[3])
            y_TD = run_grouped_mm(leaves[0], routing, leaves[1], leaves[2], ctx.activation)
            wanted = [t for t in leaves if t.requires_grad]
            grads = iter(torch.autograd.grad(y_TD, wanted, dy_TD, allow_unused=True))
        return (*[next(grads) if t.requires_grad else None for t in leaves], None, None)


def run_triton(x_TD: torch.Tensor, routing: Routing, w_in_EID: torch.Tensor, w_out_EDF: torch.Tensor,
               activation: str) -> torch.Tensor:
    problem = triton_problem(x_TD.device)
    if problem:
        raise ValueError(f"dispatch backend 'triton' cannot run on {x_TD.device} tensors: {problem}")
    return _TritonExperts.apply(x_TD, w_in_EID, w_out_EDF, routing.weight_A, routing, activation)
