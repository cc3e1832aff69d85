"""GShard top-2 (Lepikhin et al. 2020): softmax router, top-2, random second expert, capacity.

    probs = softmax(x W_g);  (g1, e1), (g2, e2) = top-2(probs);  g1, g2 <- g1/(g1+g2), g2/(g1+g2)
    the first choice is always wanted; the second only if 2*g2 > u, u ~ U(0,1)   (training)
    capacity C = ceil(CF*T*2/E) (capacity_factor None = dropless): all first choices fill the expert
    buffers, in token order, before any second choice; an assignment that finds its expert full is
    refused (kept_A = False, shapes stay static). Random refusals are kept_A = False too, so RoutingStats
counts them as dropped assignments.
A second choice refused by the random policy takes no buffer slot (GShard Algorithm 1 counts only
dispatched tokens). Combine weights stay g1, g2 when the other assignment is refused: GShard does not
renormalise after dropping.
Eval (moebench's choice, the paper gives none): deterministic, the second choice is kept whenever its
expert has room (u = 0), so eval numbers do not depend on a random draw.
drop_policy `position` is GShard's rule above; `probs` (lowest weight refused first) is honoured too.
Aux losses: GShard's balance loss is Switch's alpha*E*sum_i f_i*P_i with f counted on first choices
only; plus the ST-MoE router z-loss.
Synthetic routing (benchmarks): `selection_offset_TE`, when set, is added to the probs used to pick the
top-2 only (moebench.routing.distributions.forcing_logits); the gates still come from the router.
Axis legend: T tokens, D model dim, E experts, A = 2T assignments (token-major, a = 2t + k).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from moebench.layers.experts import gate_weight
from moebench.layers.routed import RoutedMoE
from moebench.routing.assignment import Routing
from moebench.routing.capacity import apply_capacity, expert_capacity, token_choice_priority
from moebench.routing.losses import router_z_loss, switch_load_balance
from moebench.spec import LayerSpec


def gshard_routing(logits_TE: torch.Tensor, u_T: torch.Tensor | None, capacity: int | None,
                   drop_policy: str = "position", selection_offset_TE: torch.Tensor | None = None,
                   ) -> tuple[Routing, torch.Tensor, torch.Tensor]:
    """The routing for router logits, given the uniform draws u_T (None = eval: keep every second choice
    that fits). Returns (routing, probs_TE, idx_T2) so callers can build the aux losses."""
    T, E = logits_TE.shape
    probs_TE = torch.softmax(logits_TE.float(), dim=-1)
    if selection_offset_TE is None:
        top_T2, idx_T2 = probs_TE.topk(2, dim=-1)
    else:
        idx_T2 = (probs_TE.detach() + selection_offset_TE).topk(2, dim=-1).indices
        top_T2 = probs_TE.gather(1, idx_T2)
    gate_T2 = top_T2 / top_T2.sum(-1, keepdim=True)
    wanted_T2 = torch.ones_like(idx_T2, dtype=torch.bool)
    if u_T is not None:
        wanted_T2[:, 1] = 2 * gate_T2[:, 1].detach() > u_T
    token_A = torch.arange(T, device=logits_TE.device).repeat_interleave(2)
    expert_A, weight_A, wanted_A = idx_T2.reshape(-1), gate_T2.reshape(-1), wanted_T2.reshape(-1)
    routing = Routing(token_A=token_A, expert_A=expert_A, weight_A=weight_A, kept_A=wanted_A,
                      n_tokens=T, n_experts=E)
    if capacity is not None:
        # Randomly refused second choices (kept_A False) take no slot (apply_capacity).
        routing = apply_capacity(routing, capacity, drop_policy, score_A=weight_A,
                                 priority_A=token_choice_priority(T, 2, logits_TE.device))
    return routing, probs_TE, idx_T2


class GShardRouter(nn.Module):
    def __init__(self, spec: LayerSpec):
        super().__init__()
        self.spec = spec
        self.w_gate_ED = gate_weight(spec)
        self.selection_offset_TE: torch.Tensor | None = None

    def forward(self, x_TD: torch.Tensor, token_ids: torch.Tensor | None = None) -> Routing:
        spec, T, E = self.spec, x_TD.shape[0], self.spec.n_experts
        logits_TE = F.linear(x_TD, self.w_gate_ED).float()  # router math in fp32
        u_T = torch.rand(T, device=x_TD.device) if self.training else None
        C = None if spec.capacity_factor is None else expert_capacity(spec.capacity_factor, T, E, 2,
                                                                      spec.min_capacity)
        routing, probs_TE, idx_T2 = gshard_routing(logits_TE, u_T, C, spec.drop_policy, self.selection_offset_TE)
        routing.aux_losses = {
            "load_balance": switch_load_balance(probs_TE, idx_T2[:, :1], spec.aux_loss_coef),
            "z_loss": router_z_loss(logits_TE, spec.z_loss_coef),
        }
        return routing


class GShardMoE(RoutedMoE):
    def __init__(self, spec: LayerSpec):
        super().__init__(spec, GShardRouter(spec))
