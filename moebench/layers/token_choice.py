"""Token-choice top-k: Mixtral top-2, Switch top-1, Shazeer noisy top-k, sigmoid scoring.

    logits = x W_g;  probs = softmax(logits) (or sigmoid);  keep top-K;  optionally renormalise.
    noisy (Shazeer 2017, training only): H = logits + N(0,1) * softplus(x W_noise); top-K of H;
                                         gate = softmax over the K kept H values.
Capacity (optional) drops assignments beyond C = ceil(CF*T*K/E) by the spec's drop policy.
Aux losses: Switch load balance, router z-loss, and with noisy gating Shazeer's importance + load.
Synthetic routing (benchmarks): `selection_offset_TE`, when set, is added to the scores used for
selection only (moebench.routing.distributions.forcing_logits), so a chosen distribution decides which
experts run while the router's computation and its combine weights stay real.
Axis legend: T tokens, D model dim, E experts, K experts per token, A = T*K assignments.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from moebench.dispatch.common import torch_dtype
from moebench.layers.experts import gate_weight
from moebench.layers.routed import RoutedMoE
from moebench.routing.assignment import Routing
from moebench.routing.capacity import apply_spec_capacity
from moebench.routing.losses import router_z_loss, switch_load_balance
from moebench.spec import LayerSpec


class TopKRouter(nn.Module):
    def __init__(self, spec: LayerSpec):
        super().__init__()
        self.spec = spec
        dtype = torch_dtype(spec.dtype)
        self.w_gate_ED = gate_weight(spec)
        self.w_noise_ED = None
        if spec.noisy_gating:
            # Shazeer initialises the noise weights to zero: noise starts at softplus(0) = 0.69.
            self.w_noise_ED = nn.Parameter(torch.zeros(spec.n_experts, spec.d_model, dtype=dtype))
        self.selection_offset_TE: torch.Tensor | None = None

    def forward(self, x_TD: torch.Tensor, token_ids: torch.Tensor | None = None) -> Routing:
        spec, K, E = self.spec, self.spec.top_k, self.spec.n_experts
        if self.training and spec.jitter > 0:
            x_TD = x_TD * torch.empty_like(x_TD).uniform_(1 - spec.jitter, 1 + spec.jitter)
        logits_TE = F.linear(x_TD, self.w_gate_ED).float()  # router math in fp32, as Mixtral does
        aux = {"z_loss": router_z_loss(logits_TE, spec.z_loss_coef)}
        if self.w_noise_ED is not None and self.training:
            noise_std_TE = F.softplus(F.linear(x_TD, self.w_noise_ED).float())
            noisy_TE = logits_TE + torch.randn_like(logits_TE) * noise_std_TE
            top_TK, idx_TK = _select(noisy_TE, self.selection_offset_TE, K)
            weight_TK = score_TK = torch.softmax(top_TK, dim=-1)
            probs_TE = torch.zeros_like(logits_TE).scatter(1, idx_TK, weight_TK)  # G(x) of the paper
            aux["importance"] = importance_loss(probs_TE, spec.aux_loss_coef)
            aux["load"] = load_loss(logits_TE, noisy_TE, noise_std_TE, K, spec.aux_loss_coef)
        else:
            probs_TE = torch.softmax(logits_TE, -1) if spec.score_func == "softmax" else torch.sigmoid(logits_TE)
            score_TK, idx_TK = _select(probs_TE, self.selection_offset_TE, K)
            weight_TK = score_TK / score_TK.sum(-1, keepdim=True) if spec.renormalize else score_TK
            aux["load_balance"] = switch_load_balance(probs_TE, idx_TK, spec.aux_loss_coef)
        return apply_spec_capacity(Routing.from_top_k(idx_TK, weight_TK, E, aux), spec, score_TK)


def _select(scores_TE: torch.Tensor, offset_TE: torch.Tensor | None, K: int):
    """Top-K of the scores, or of scores + offset (selection only; values come from scores)."""
    if offset_TE is None:
        return scores_TE.topk(K, dim=-1)
    _, idx_TK = (scores_TE + offset_TE).topk(K, dim=-1)
    return scores_TE.gather(1, idx_TK), idx_TK


def cv_squared(v: torch.Tensor) -> torch.Tensor:
    """Squared coefficient of variation, 0 for fewer than two values (Shazeer 2017)."""
    if v.numel() < 2:
        return torch.zeros((), device=v.device)
    # Population variance (divide by n), as Shazeer's tensor2tensor cv_squared does.
    return v.float().var(unbiased=False) / (v.float().mean().square() + 1e-10)


def importance_loss(gates_TE: torch.Tensor, coef: float) -> torch.Tensor:
    """w * CV(sum_x G(x))^2."""
    return coef * cv_squared(gates_TE.sum(0))


def load_loss(clean_TE: torch.Tensor, noisy_TE: torch.Tensor, noise_std_TE: torch.Tensor, k: int,
              coef: float) -> torch.Tensor:
    """w * CV(Load)^2, Load_i = sum_x P(expert i stays in the top k under fresh noise).

    P = Phi((clean_i - kth_excluding(H, k, i)) / noise_std_i): the threshold is the k-th largest
    noisy value among the others, i.e. the (k+1)-th overall if i is in the top k, else the k-th.
    """
    E = noisy_TE.shape[1]
    top_T, _ = noisy_TE.topk(min(k + 1, E), dim=-1)
    kth_T1 = top_T[:, k - 1:k]
    kplus1_T1 = top_T[:, k:k + 1] if k < E else top_T[:, k - 1:k]
    in_top_TE = noisy_TE >= kth_T1
    threshold_TE = torch.where(in_top_TE, kplus1_T1, kth_T1)
    normal = torch.distributions.Normal(0.0, 1.0)
    prob_TE = normal.cdf((clean_TE - threshold_TE) / noise_std_TE)
    return coef * cv_squared(prob_TE.sum(0))


class TokenChoiceMoE(RoutedMoE):
    def __init__(self, spec: LayerSpec):
        super().__init__(spec, TopKRouter(spec))
