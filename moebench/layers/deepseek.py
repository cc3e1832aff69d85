"""DeepSeekMoE / V2 / V3: shared experts plus fine-grained routed experts, group-limited top-K.

    y = sum_shared FFN_s(x) + routed_scaling * sum_{i in top-K} g_i FFN_i(x)   (no residual: the block adds x)

V2 (score_func="softmax"): s = softmax(x W_g) over all E routed experts; g = the kept s, NOT
    renormalised (spec.renormalize=False for V2; honoured either way).
V3 (score_func="sigmoid", expert_bias=True): s = sigmoid(x W_g); experts are *selected* on s + b,
    a per-expert bias used for selection only; g = the kept un-biased s, renormalised if
    spec.renormalize (V3's norm_topk_prob, with the same +1e-20 in the denominator).
Group-limited routing (n_groups > 1): the E experts form n_groups groups of E/n_groups; a token first
    keeps its best topk_groups groups, then picks top-K experts inside them. Group score, as in
    transformers 5.24: softmax (V2 group_limited_greedy) = max selection score in the group;
    sigmoid (V3 noaux_tc) = sum of the top-2 selection scores in the group.
Bias update (V3 aux-loss-free balancing): training forwards accumulate the per-expert load; call
    `update_bias()` once per optimizer step: b_i += gamma * sign(mean_load - load_i), gamma = bias_update_rate.
Aux loss (expert-level balance): alpha1 * sum_i f_i P_i, f_i = E/(K*T) * count_i,
    P_i = mean_t s'_{i,t} with s' = s / sum_j s_j (already s for softmax), alpha1 = spec.aux_loss_coef
    (DeepSeek-V2 used 0.003; V3's sequence-wise variant uses a tiny alpha and treats each sequence
    alone, here all T tokens are one sequence). Uniform routing gives exactly alpha1. The device-level
    and communication losses of V2 (alpha2, alpha3) are not implemented: one layer has no devices.
Capacity (optional, DeepSeek itself is dropless): C = ceil(CF*T*K/E) with the spec's drop policy.
Axis legend: T tokens, D model dim, E routed experts, K experts per token, G groups, A = T*K assignments.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from moebench.layers.experts import gate_weight
from moebench.layers.routed import RoutedMoE
from moebench.routing.assignment import Routing
from moebench.routing.capacity import apply_spec_capacity
from moebench.routing.losses import switch_load_balance
from moebench.spec import LayerSpec


def group_mask(choice_TE: torch.Tensor, n_groups: int, topk_groups: int, score_func: str) -> torch.Tensor:
    """[T, E] bool: True for experts in the topk_groups best groups of each token."""
    T, E = choice_TE.shape
    grouped_TGe = choice_TE.view(T, n_groups, E // n_groups)
    if score_func == "softmax":
        group_TG = grouped_TGe.max(dim=-1).values
    else:  # V3 takes the top 2; a group of one expert has only its max
        group_TG = grouped_TGe.topk(min(2, E // n_groups), dim=-1).values.sum(dim=-1)
    keep_TG = torch.zeros_like(group_TG, dtype=torch.bool)
    keep_TG.scatter_(1, group_TG.topk(topk_groups, dim=-1).indices, True)
    return keep_TG.repeat_interleave(E // n_groups, dim=1)


class DeepSeekRouter(nn.Module):
    def __init__(self, spec: LayerSpec):
        super().__init__()
        self.spec = spec
        E = spec.n_experts
        self.w_gate_ED = gate_weight(spec)
        # Selection-only bias (transformers' e_score_correction_bias); stays zero without expert_bias.
        self.register_buffer("bias_E", torch.zeros(E, dtype=torch.float32))
        self.register_buffer("load_since_update_E", torch.zeros(E, dtype=torch.float32), persistent=False)
        self.selection_offset_TE: torch.Tensor | None = None  # synthetic routing (benchmarks), selection only

    def forward(self, x_TD: torch.Tensor, token_ids: torch.Tensor | None = None) -> Routing:
        spec, K, E = self.spec, self.spec.top_k, self.spec.n_experts
        # Router math in fp32 on fp32 copies of both operands, as transformers' DeepSeek routers do.
        logits_TE = F.linear(x_TD.float(), self.w_gate_ED.float())
        scores_TE = torch.softmax(logits_TE, -1) if spec.score_func == "softmax" else torch.sigmoid(logits_TE)
        choice_TE = scores_TE + self.bias_E if spec.expert_bias else scores_TE
        if self.selection_offset_TE is not None:  # before the group mask, so forced experts' groups win
            choice_TE = choice_TE + self.selection_offset_TE
        if spec.n_groups > 1:
            keep_TE = group_mask(choice_TE.detach(), spec.n_groups, spec.topk_groups, spec.score_func)
            choice_TE = choice_TE.masked_fill(~keep_TE, float("-inf"))
        idx_TK = choice_TE.detach().topk(K, dim=-1).indices
        score_TK = scores_TE.gather(1, idx_TK)  # from the un-biased scores: the bias never weights
        weight_TK = score_TK / (score_TK.sum(-1, keepdim=True) + 1e-20) if spec.renormalize else score_TK
        if self.training and spec.expert_bias:
            with torch.no_grad():
                self.load_since_update_E += torch.bincount(idx_TK.reshape(-1), minlength=E)[:E].float()
        # E/(K*T) * count_i * mean_t s'_i summed == E * sum_i (count_i / (K*T)) * P_i: the Switch form.
        normalised_TE = scores_TE / scores_TE.sum(-1, keepdim=True)
        aux = {"load_balance": switch_load_balance(normalised_TE, idx_TK, spec.aux_loss_coef)}
        return apply_spec_capacity(Routing.from_top_k(idx_TK, weight_TK, E, aux), spec, score_TK)

    @torch.no_grad()
    def update_bias(self) -> None:
        """V3: b_i += gamma * sign(mean_load - load_i) over the loads since the last update; then reset."""
        load_E = self.load_since_update_E
        if load_E.sum() > 0:
            self.bias_E += self.spec.bias_update_rate * torch.sign(load_E.mean() - load_E)
        load_E.zero_()


class DeepSeekMoE(RoutedMoE):
    """Shared experts (spec.n_shared of width shared_d_ff) and routed_scaling come from RoutedMoE."""

    def __init__(self, spec: LayerSpec):
        super().__init__(spec, DeepSeekRouter(spec))

    def update_bias(self) -> None:
        """Apply the V3 bias update once per training step (no-op unless spec.expert_bias)."""
        if self.spec.expert_bias:
            self.router.update_bias()
