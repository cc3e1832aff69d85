"""Expert weights and the FFN they compute.

Weights use the nn.Linear (out, in) layout, the same as transformers' fused MoE experts, so interop
copies them without a transpose:
    w_in_EID  [E, I, D]  I = 2F for swiglu (gate rows first, then up rows), I = F otherwise
    w_out_EDF [E, D, F]
Axis legend: T tokens, D model dim, F expert hidden dim, E experts, I = rows of w_in.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from moebench.dispatch import get_backend
from moebench.dispatch.common import ffn, torch_dtype
from moebench.routing.assignment import Routing
from moebench.spec import LayerSpec


def in_rows(d_ff: int, activation: str) -> int:
    return 2 * d_ff if activation == "swiglu" else d_ff


class FFN(nn.Module):
    """A dense FFN: the dense baseline, and the shared experts of DeepSeekMoE / Qwen2-MoE."""

    def __init__(self, d_model: int, d_ff: int, activation: str, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.activation = activation
        self.w_in_ID = nn.Parameter(torch.empty(in_rows(d_ff, activation), d_model, dtype=dtype))
        self.w_out_DF = nn.Parameter(torch.empty(d_model, d_ff, dtype=dtype))
        nn.init.normal_(self.w_in_ID, std=1 / math.sqrt(d_model))
        nn.init.normal_(self.w_out_DF, std=1 / math.sqrt(d_ff))

    def forward(self, x_TD: torch.Tensor) -> torch.Tensor:
        return ffn(x_TD, self.w_in_ID, self.w_out_DF, self.activation)


class RoutedExperts(nn.Module):
    """E experts of width F, computed for a Routing by a named dispatch backend."""

    def __init__(self, spec: LayerSpec, n_experts: int | None = None):
        super().__init__()
        E, D, Fh = n_experts or spec.n_experts, spec.d_model, spec.d_ff
        dtype = torch_dtype(spec.dtype)
        self.activation = spec.activation
        self.backend = get_backend(spec.backend)
        self.backend.check(spec)
        self.w_in_EID = nn.Parameter(torch.empty(E, in_rows(Fh, spec.activation), D, dtype=dtype))
        self.w_out_EDF = nn.Parameter(torch.empty(E, D, Fh, dtype=dtype))
        nn.init.normal_(self.w_in_EID, std=1 / math.sqrt(D))
        nn.init.normal_(self.w_out_EDF, std=1 / math.sqrt(Fh))

    @property
    def n_experts(self) -> int:
        return self.w_in_EID.shape[0]

    def forward(self, x_TD: torch.Tensor, routing: Routing) -> torch.Tensor:
        return self.backend.run(x_TD, routing, self.w_in_EID, self.w_out_EDF, self.activation)


def gate_weight(spec: LayerSpec) -> nn.Parameter:
    """A router's w_gate_ED [E, D]: N(0, 1/D), so logits start O(1) whatever D is."""
    return nn.Parameter(torch.randn(spec.n_experts, spec.d_model, dtype=torch_dtype(spec.dtype))
                        / math.sqrt(spec.d_model))
