"""The readable reference backend: for each expert, gather its tokens, run its FFN, scatter back.

Every other backend is tested against this one.
"""

from __future__ import annotations

import torch

from moebench.dispatch.common import ffn
from moebench.measure.code_path import note
from moebench.measure.phases import phase
from moebench.routing.assignment import Routing


def run_loop(x_TD: torch.Tensor, routing: Routing, w_in_EID: torch.Tensor, w_out_EDF: torch.Tensor,
             activation: str) -> torch.Tensor:
    for step in ("experts", activation, "combine"):
        note(step, "torch")
    y_TD = torch.zeros(x_TD.shape, dtype=torch.float32, device=x_TD.device)
    for e in range(w_in_EID.shape[0]):
        with phase("dispatch"):
            mine_A = (routing.expert_A == e) & routing.kept_A
            token_a = routing.token_A[mine_A]
            if token_a.numel() == 0:
                continue
            x_aD = x_TD[token_a]
        with phase("experts"):
            out_aD = ffn(x_aD, w_in_EID[e], w_out_EDF[e], activation)
        with phase("combine"):
            y_TD = y_TD.index_add(0, token_a, out_aD.float() * routing.weight_A[mine_A, None].float())
    return y_TD.to(x_TD.dtype)
