"""Sort + gather: sort the kept assignments by expert, gather their tokens into one contiguous
buffer, run one GEMM pair per expert on its slice, then scale and scatter-add back.

One host sync (the per-expert counts) decides the slice boundaries.
Axis legend: T tokens, D model dim, E experts, A assignments, S sorted kept assignments.
"""

from __future__ import annotations

import torch

from moebench.dispatch.common import ffn
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


def run_sort_gather(x_TD: torch.Tensor, routing: Routing, w_in_EID: torch.Tensor, w_out_EDF: torch.Tensor,
                    activation: str) -> torch.Tensor:
    with phase("dispatch"):
        order_A, counts_E = sort_by_expert(routing)
        counts = counts_E.tolist()  # the host sync
        n_kept = sum(counts)
        order_S = order_A[:n_kept]
        token_S = routing.token_A[order_S]
        x_SD = x_TD[token_S]
    with phase("experts"):
        outs, start = [], 0
        for e, n in enumerate(counts):
            if n:
                outs.append(ffn(x_SD[start:start + n], w_in_EID[e], w_out_EDF[e], activation))
            start += n
    with phase("combine"):
        y_TD = torch.zeros(x_TD.shape, dtype=torch.float32, device=x_TD.device)
        if outs:
            out_SD = torch.cat(outs).float() * routing.weight_A[order_S, None].float()
            y_TD = y_TD.index_add(0, token_S, out_SD)
        return y_TD.to(x_TD.dtype)
