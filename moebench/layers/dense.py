"""Dense FFN baseline: y = w_out act(w_in x), one expert of width F that every token uses.

Compare an MoE against a dense FFN with equal *active* parameters (F = K * F_expert) and with equal
*total* parameters (F = E * F_expert). Axis legend: T tokens, D model dim.
"""

from __future__ import annotations

import torch
from torch import nn

from moebench.dispatch.common import torch_dtype
from moebench.layers.experts import FFN
from moebench.measure.code_path import note
from moebench.spec import LayerSpec


class DenseFFN(nn.Module):
    def __init__(self, spec: LayerSpec):
        super().__init__()
        self.spec = spec
        self.ffn = FFN(spec.d_model, spec.d_ff, spec.activation, torch_dtype(spec.dtype))
        self.last_stats = None  # no routing

    def forward(self, x: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:
        note("experts", "torch")  # the one expert: two GEMMs and the activation in torch
        note(self.spec.activation, "torch")
        return self.ffn(x.reshape(-1, x.shape[-1])).reshape(x.shape)
