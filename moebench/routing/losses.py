"""Auxiliary router losses (docs/formulas.md#auxiliary-losses). Each returns a scalar tensor with gradient.

Axis legend: T tokens, E experts, K experts per token.
"""

from __future__ import annotations

import torch


def switch_load_balance(probs_TE: torch.Tensor, idx_TK: torch.Tensor, alpha: float) -> torch.Tensor:
    """Switch Transformer: alpha * E * sum_i f_i * P_i.

    f_i = fraction of the T*K assignments sent to expert i (for K = 1: tokens whose argmax is i),
    P_i = mean router probability of expert i. Under perfectly uniform routing f_i = P_i = 1/E and
    the loss equals alpha, its floor.
    """
    T, E = probs_TE.shape
    # scatter_add, not bincount: bincount sizes its output from the data, a host sync on CUDA
    idx_A = idx_TK.reshape(-1)
    f_E = probs_TE.new_zeros(E).scatter_add_(0, idx_A, torch.ones_like(idx_A, dtype=probs_TE.dtype)) / idx_TK.numel()
    P_E = probs_TE.mean(dim=0)
    return alpha * E * torch.sum(f_E * P_E)


def router_z_loss(logits_TE: torch.Tensor, coef: float) -> torch.Tensor:
    """ST-MoE: coef * mean over tokens of logsumexp(logits)^2."""
    return coef * torch.logsumexp(logits_TE.float(), dim=-1).square().mean()


def reinforce_loss(log_prob_T: torch.Tensor, reward_T: torch.Tensor,
                   baseline: torch.Tensor | float | None = None) -> torch.Tensor:
    """REINFORCE (Williams 1992), as RL-R trains its router (Clark 2022): -mean_t (r_t - b) * log pi(a_t).

    Its gradient is the policy-gradient estimate -mean_t (r_t - b) * grad log pi(a_t); the reward and
    the baseline b are detached. b defaults to the leave-one-out batch mean, b_t = mean of the other
    tokens' rewards: it lowers the variance and, not depending on a_t, leaves the gradient unbiased.
    """
    reward_T = reward_T.detach().float()
    if baseline is None:
        T = reward_T.numel()
        baseline = (reward_T.sum() - reward_T) / (T - 1) if T > 1 else torch.zeros_like(reward_T)
    elif isinstance(baseline, torch.Tensor):
        baseline = baseline.detach()
    return -((reward_T - baseline) * log_prob_T.float()).mean()
