"""RL-R (Clark et al. 2022): top-1 expert sampled from the router, router trained by REINFORCE.

    pi(e | x) = softmax(x W_g);  training: e_t ~ pi(. | x_t);  eval: e_t = argmax pi(. | x_t)
    weight_t = pi(e_t | x_t)   (the chosen expert's probability, so gradients also flow through it)
The sampling step has no gradient; the router is trained by the policy-gradient loss
    L_RL = -mean_t (r_t - b) * log pi(e_t | x_t)
where r_t is a per-token reward (e.g. minus that token's LM loss, detached) and b a baseline (default
the mean reward of the other tokens of the batch: lower variance, unbiased gradient). After a forward:
    y = layer(x); loss_T = ...per-token task loss...
    total = loss_T.mean() + layer.reinforce_loss(-loss_T.detach())
moebench also returns the Switch load-balance loss (aux_loss_coef; 0 disables) and the z-loss in
Routing.aux_losses, since REINFORCE alone gives the router no push toward balance.
Capacity C = ceil(CF*T/E) when spec.capacity_factor is set. score_func must be softmax (a policy).
Synthetic routing (benchmarks): `selection_offset_TE`, when set, replaces sampling/argmax by the argmax
of probs + offset (moebench.routing.distributions.forcing_logits); weights stay the router's probs.
Axis legend: T tokens, D model dim, E experts, A = T assignments.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from moebench.layers.experts import gate_weight
from moebench.layers.routed import RoutedMoE
from moebench.routing.assignment import Routing
from moebench.routing.capacity import apply_spec_capacity
from moebench.routing.losses import reinforce_loss, router_z_loss, switch_load_balance
from moebench.spec import LayerSpec


class RLRouter(nn.Module):
    def __init__(self, spec: LayerSpec):
        super().__init__()
        if spec.score_func != "softmax":
            raise ValueError(f"LayerSpec.score_func={spec.score_func!r} is invalid for variant 'rl': "
                             "the router is a policy, allowed value is softmax")
        self.spec = spec
        self.w_gate_ED = gate_weight(spec)
        self.last_log_prob_T: torch.Tensor | None = None  # log pi(e_t | x_t) of the last forward
        self.selection_offset_TE: torch.Tensor | None = None

    def forward(self, x_TD: torch.Tensor, token_ids: torch.Tensor | None = None) -> Routing:
        spec, E = self.spec, self.spec.n_experts
        logits_TE = F.linear(x_TD, self.w_gate_ED).float()  # router math in fp32
        log_probs_TE = torch.log_softmax(logits_TE, dim=-1)
        probs_TE = log_probs_TE.exp()
        if self.selection_offset_TE is not None:
            idx_T = (probs_TE.detach() + self.selection_offset_TE).argmax(dim=-1)
        elif self.training:
            idx_T = torch.multinomial(probs_TE.detach(), 1).squeeze(1)
        else:
            idx_T = probs_TE.detach().argmax(dim=-1)
        self.last_log_prob_T = log_probs_TE.gather(1, idx_T[:, None]).squeeze(1)
        aux = {"load_balance": switch_load_balance(probs_TE, idx_T[:, None], spec.aux_loss_coef),
               "z_loss": router_z_loss(logits_TE, spec.z_loss_coef)}
        score_T1 = probs_TE.gather(1, idx_T[:, None])
        return apply_spec_capacity(Routing.from_top_k(idx_T[:, None], score_T1, E, aux), spec, score_T1)

    def reinforce_loss(self, reward_T: torch.Tensor, baseline: torch.Tensor | float | None = None) -> torch.Tensor:
        """REINFORCE loss for the experts sampled in the last forward (see the module docstring)."""
        assert self.last_log_prob_T is not None, "call forward first"
        return reinforce_loss(self.last_log_prob_T, reward_T.reshape(-1), baseline)


class RLMoE(RoutedMoE):
    def __init__(self, spec: LayerSpec):
        super().__init__(spec, RLRouter(spec))

    def reinforce_loss(self, reward: torch.Tensor, baseline: torch.Tensor | float | None = None) -> torch.Tensor:
        """reward: one value per token, shaped like x without its last dim (detached by this call)."""
        return self.router.reinforce_loss(reward, baseline)
