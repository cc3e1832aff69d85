"""Aux-loss values: floors under perfectly uniform routing, and naive per-token references."""

from __future__ import annotations

import math

import pytest
import torch

from moebench.layers.token_choice import cv_squared, importance_loss
from moebench.routing.losses import reinforce_loss, router_z_loss, switch_load_balance


def naive_switch(probs_TE: torch.Tensor, idx_TK: torch.Tensor, alpha: float) -> float:
    T, E = probs_TE.shape
    f = [0.0] * E
    for t in range(T):
        for e in idx_TK[t].tolist():
            f[e] += 1 / idx_TK.numel()
    P = [sum(probs_TE[t, e].item() for t in range(T)) / T for e in range(E)]
    return alpha * E * sum(f[e] * P[e] for e in range(E))


@pytest.mark.parametrize("E,K", [(4, 1), (8, 2), (64, 1)])
def test_switch_load_balance_floor_is_alpha_under_uniform_routing(E, K):
    T = 2 * E
    probs_TE = torch.full((T, E), 1 / E)
    idx_TK = (torch.arange(T * K) % E).reshape(T, K)  # every expert gets exactly T*K/E assignments
    assert switch_load_balance(probs_TE, idx_TK, 0.01).item() == pytest.approx(0.01, rel=1e-6)


def test_switch_load_balance_collapsed_routing_is_alpha_times_E():
    E = 8
    probs_TE = torch.zeros(16, E)
    probs_TE[:, 3] = 1.0
    idx_TK = torch.full((16, 1), 3)
    assert switch_load_balance(probs_TE, idx_TK, 0.01).item() == pytest.approx(0.01 * E)


def test_switch_load_balance_matches_naive_and_has_gradient():
    g = torch.Generator().manual_seed(0)
    logits_TE = torch.randn(12, 5, generator=g, requires_grad=True)
    probs_TE = torch.softmax(logits_TE, -1)
    idx_TK = probs_TE.topk(2, dim=-1).indices
    loss = switch_load_balance(probs_TE, idx_TK, 0.01)
    assert loss.item() == pytest.approx(naive_switch(probs_TE.detach(), idx_TK, 0.01), rel=1e-6)
    loss.backward()
    assert logits_TE.grad.abs().sum() > 0


@pytest.mark.parametrize("E", [2, 8, 64])
def test_z_loss_of_zero_logits_is_coef_log_E_squared(E):
    assert router_z_loss(torch.zeros(10, E), 0.001).item() == pytest.approx(0.001 * math.log(E) ** 2, rel=1e-6)


def test_z_loss_matches_naive_per_token_loop():
    logits_TE = torch.randn(9, 6, generator=torch.Generator().manual_seed(1)) * 3
    naive = sum(math.log(sum(math.exp(v) for v in row)) ** 2 for row in logits_TE.tolist()) / 9
    assert router_z_loss(logits_TE, 0.001).item() == pytest.approx(0.001 * naive, rel=1e-5)
    assert router_z_loss(logits_TE.bfloat16(), 0.001).dtype == torch.float32  # computed in fp32


def test_importance_cv_squared_is_zero_for_equal_importance():
    gates_TE = torch.full((6, 4), 0.25)
    assert importance_loss(gates_TE, 0.01).item() == 0.0
    assert cv_squared(torch.ones(5)).item() == 0.0
    assert cv_squared(torch.ones(1) * 3).item() == 0.0  # fewer than two values


def test_cv_squared_matches_naive_population_variance_over_mean_squared():
    v = torch.tensor([1.0, 2.0, 4.0, 7.0])
    mean = sum(v.tolist()) / 4
    var = sum((x - mean) ** 2 for x in v.tolist()) / 4  # divide by n, as tensor2tensor's cv_squared
    assert cv_squared(v).item() == pytest.approx(var / mean**2, rel=1e-6)


# --- REINFORCE ---------------------------------------------------------------------------------


def test_reinforce_loss_default_baseline_is_leave_one_out_mean():
    log_prob_T = torch.log(torch.tensor([0.5, 0.25, 0.8], requires_grad=True))
    reward_T = torch.tensor([1.0, 3.0, 2.0])
    b = [(3 + 2) / 2, (1 + 2) / 2, (1 + 3) / 2]
    naive = -sum((r - bt) * lp for r, bt, lp in zip(reward_T.tolist(), b, log_prob_T.tolist(), strict=True)) / 3
    assert reinforce_loss(log_prob_T, reward_T).item() == pytest.approx(naive, rel=1e-6)
    fixed = -sum((r - 1.5) * lp for r, lp in zip(reward_T.tolist(), log_prob_T.tolist(), strict=True)) / 3
    assert reinforce_loss(log_prob_T, reward_T, baseline=1.5).item() == pytest.approx(fixed, rel=1e-6)


def test_reinforce_loss_gradient_is_the_policy_gradient():
    """d/dlogits of -mean (r - b) log pi(a) == -(1/T) sum_t (r_t - b)(onehot(a_t) - pi_t)."""
    g = torch.Generator().manual_seed(2)
    logits_TE = torch.randn(5, 4, generator=g, requires_grad=True)
    a_T = torch.tensor([0, 3, 1, 1, 2])
    reward_T = torch.randn(5, generator=g, requires_grad=True)
    log_prob_T = torch.log_softmax(logits_TE, -1).gather(1, a_T[:, None]).squeeze(1)
    reinforce_loss(log_prob_T, reward_T, baseline=0.3).backward()
    probs = torch.softmax(logits_TE.detach(), -1)
    for t in range(5):
        for e in range(4):
            expected = -(reward_T[t].item() - 0.3) * ((a_T[t] == e).float().item() - probs[t, e].item()) / 5
            assert logits_TE.grad[t, e].item() == pytest.approx(expected, abs=1e-6)
    assert reward_T.grad is None  # the reward is detached
