"""Expert choice (Zhou et al. 2022): every expert picks its own top-k tokens.

    S = softmax(x W_g) over experts                      [T, E]
    k = ceil(T * c / E), clamped to [1, T]               (c = spec.expert_capacity_c, default 2)
    for each expert e: its k tokens = top-k of S[:, e]; weight = S[token, e]
    y_t = sum over the experts that picked t of S[t, e] * FFN_e(x_t)
Every expert processes exactly k tokens (perfect balance by construction); a token may be picked by
several experts or by none (those show up as RoutingStats.tokens_unrouted). Nothing is ever refused,
so spec.capacity_factor and drop_policy do not apply; Routing.capacity records k.
Rounding: ceil, with expert_capacity's float guard (T*c/E = 160.0000001 -> 160), so T*c/E tokens per
expert whenever that is an integer. Zhou 2022 uses no balance loss; none is returned.
Ties between equal scores go to torch.topk's choice.
Axis legend: T tokens, D model dim, E experts, k tokens per expert, A = E*k assignments (expert-major).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from moebench.layers.experts import gate_weight
from moebench.layers.routed import RoutedMoE
from moebench.routing.assignment import Routing
from moebench.routing.capacity import expert_capacity
from moebench.spec import LayerSpec


def tokens_per_expert(n_tokens: int, n_experts: int, c: float) -> int:
    """k = ceil(T*c/E), at least 1 and at most T."""
    return min(n_tokens, max(1, expert_capacity(c, n_tokens, n_experts, 1)))


def expert_choice_routing(logits_TE: torch.Tensor, c: float) -> Routing:
    T, E = logits_TE.shape
    k = tokens_per_expert(T, E, c)
    scores_TE = torch.softmax(logits_TE.float(), dim=-1)
    weight_Ek, token_Ek = scores_TE.t().topk(k, dim=-1)
    return Routing(
        token_A=token_Ek.reshape(-1),
        expert_A=torch.arange(E, device=logits_TE.device).repeat_interleave(k),
        weight_A=weight_Ek.reshape(-1),
        kept_A=torch.ones(E * k, dtype=torch.bool, device=logits_TE.device),
        n_tokens=T, n_experts=E, capacity=k,
    )


class ExpertChoiceRouter(nn.Module):
    def __init__(self, spec: LayerSpec):
        super().__init__()
        self.spec = spec
        self.w_gate_ED = gate_weight(spec)

    def forward(self, x_TD: torch.Tensor, token_ids: torch.Tensor | None = None) -> Routing:
        logits_TE = F.linear(x_TD, self.w_gate_ED).float()  # router math in fp32
        return expert_choice_routing(logits_TE, self.spec.expert_capacity_c)


class ExpertChoiceMoE(RoutedMoE):
    def __init__(self, spec: LayerSpec):
        super().__init__(spec, ExpertChoiceRouter(spec))
