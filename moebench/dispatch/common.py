"""What every dispatch backend shares: the FFN math and the Backend record.

A backend computes y_TD = sum over kept assignments a of weight_a * FFN_{expert_a}(x_{token_a}),
accumulated in float32 and returned in x's dtype. Backends differ in speed, never in results.
Axis legend: T tokens, D model dim, F expert hidden dim, E experts, A assignments, I = rows of w_in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from moebench.routing.assignment import Routing
from moebench.spec import LayerSpec


def torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def activate(h_TI: torch.Tensor, activation: str) -> torch.Tensor:
    """Hidden activation of one FFN: [.., I] -> [.., F]."""
    if activation == "swiglu":
        gate, up = h_TI.chunk(2, dim=-1)
        return F.silu(gate) * up
    if activation == "gelu":
        return F.gelu(h_TI)
    if activation == "relu":
        return F.relu(h_TI)
    raise ValueError(f"activation={activation!r} is invalid: allowed values are swiglu, gelu, relu")


def ffn(x_TD: torch.Tensor, w_in_ID: torch.Tensor, w_out_DF: torch.Tensor, activation: str) -> torch.Tensor:
    """One expert: w_out @ act(w_in @ x)."""
    return F.linear(activate(F.linear(x_TD, w_in_ID), activation), w_out_DF)


def expert_rows(counts: list[int]) -> Iterator[tuple[int, slice]]:
    """(expert, its rows of the expert-sorted buffer) for every expert with assignments, in order."""
    start = 0
    for e, n in enumerate(counts):
        if n:
            yield e, slice(start, start + n)
        start += n


RunFn = Callable[[torch.Tensor, Routing, torch.Tensor, torch.Tensor, str], torch.Tensor]


@dataclass(frozen=True)
class Backend:
    """A dispatch backend and what it supports; `check` refuses specs it cannot run."""

    name: str
    run: RunFn
    description: str
    supports_dropless: bool = True
    supports_capacity: bool = True
    graph_capturable: bool = False  # static shapes, no host syncs: safe inside a CUDA graph
    host_syncs: bool = True  # reads a device value on the host (e.g. per-expert counts)

    def check(self, spec: LayerSpec) -> None:
        if spec.capacity_factor is None and not self.supports_dropless:
            raise ValueError(f"LayerSpec.backend={self.name!r} does not support dropless routing "
                             "(capacity_factor=None); set a capacity_factor or choose another backend")
        if spec.capacity_factor is not None and not self.supports_capacity:
            raise ValueError(f"LayerSpec.backend={self.name!r} does not support a capacity_factor; "
                             "use capacity_factor=None or choose another backend")
