"""RL-R (Clark 2022): sampled top-1 routing and its REINFORCE loss."""

from __future__ import annotations

import math

import pytest
import torch

from moebench.dispatch.common import ffn
from moebench.layers import build_layer
from moebench.layers.rl import RLMoE
from moebench.routing.distributions import forcing_logits
from moebench.spec import LayerSpec

SMALL = dict(variant="rl", d_model=12, d_ff=8, n_experts=4, top_k=1, backend="loop")


def make(seed: int = 0, **fields) -> RLMoE:
    torch.manual_seed(seed)
    return build_layer(LayerSpec(**{**SMALL, **fields}))


def naive_probs(layer: RLMoE, x_D: torch.Tensor) -> list[float]:
    logits = [float(w @ x_D) for w in layer.router.w_gate_ED.detach().double()]
    z = sum(math.exp(v) for v in logits)
    return [math.exp(v) / z for v in logits]


def test_eval_is_greedy_and_matches_per_token_reference():
    layer = make(1).eval()
    x_TD = torch.randn(12, 12)
    y = layer(x_TD)
    e = layer.experts
    for t in range(12):
        p = naive_probs(layer, x_TD[t].double())
        i = max(range(4), key=lambda j: p[j])
        y_ref = p[i] * ffn(x_TD[t:t + 1].double(), e.w_in_EID[i].double(), e.w_out_EDF[i].double(), "swiglu")[0]
        torch.testing.assert_close(y[t].double(), y_ref, rtol=1e-4, atol=1e-5)


def test_training_samples_from_the_router_softmax():
    layer = make(2).train()
    x_TD = torch.randn(1, 12).expand(20000, 12)  # one token repeated: one distribution, 20000 draws
    torch.manual_seed(0)
    routing = layer.router(x_TD)
    freq = torch.bincount(routing.expert_A, minlength=4).double() / 20000
    p = torch.tensor(naive_probs(layer, x_TD[0].double()), dtype=torch.float64)
    assert (freq - p).abs().max().item() < 0.015  # binomial sd <= 0.0036
    torch.testing.assert_close(routing.weight_A.detach().double(), p[routing.expert_A], rtol=1e-5, atol=1e-7)
    assert routing.expert_A.unique().numel() > 1  # really sampled, not argmax


def test_reinforce_loss_gradient_and_sign():
    """Rewarding the tokens that were sent to expert 0 makes expert 0 more likely after one SGD step."""
    layer = make(3).train()
    torch.manual_seed(1)
    x_TD = torch.randn(256, 12)
    chosen_T = layer.router(x_TD).expert_A  # the router keeps log pi(chosen) for reinforce_loss
    reward_T = (chosen_T == 0).float()
    loss = layer.reinforce_loss(reward_T)
    log_pi_T = torch.log_softmax(x_TD @ layer.router.w_gate_ED.t(), -1).gather(1, chosen_T[:, None])[:, 0]
    b_T = (reward_T.sum() - reward_T) / 255
    torch.testing.assert_close(loss, -((reward_T - b_T) * log_pi_T).mean())
    p0_before = torch.softmax(x_TD @ layer.router.w_gate_ED.detach().t(), -1)[:, 0].mean()
    layer.router.w_gate_ED.grad = None
    loss.backward()
    with torch.no_grad():
        layer.router.w_gate_ED -= 1.0 * layer.router.w_gate_ED.grad
    p0_after = torch.softmax(x_TD @ layer.router.w_gate_ED.detach().t(), -1)[:, 0].mean()
    assert p0_after > p0_before


def test_reinforce_loss_accepts_batch_shaped_rewards_and_needs_a_forward():
    layer = make(4)
    with pytest.raises(AssertionError, match="forward"):
        layer.reinforce_loss(torch.zeros(6))
    layer(torch.randn(2, 3, 12))
    assert layer.reinforce_loss(torch.randn(2, 3)).shape == ()


def test_aux_losses_and_capacity():
    layer = make(5, capacity_factor=1.0)
    with torch.no_grad():
        layer.router.w_gate_ED[0] += 5.0
    layer.eval()(torch.randn(40, 12).abs())
    stats = layer.last_stats
    assert set(stats.aux_losses) == {"load_balance", "z_loss"}
    assert stats.kept_load_E.max().item() <= 10 and stats.assignments_dropped.item() > 0


def test_rejects_sigmoid_scores():
    with pytest.raises(ValueError, match="score_func"):
        make(score_func="sigmoid")


def test_selection_offset_forces_the_expert_in_train_and_eval():
    layer = make(6)
    x_TD = torch.randn(10, 12)
    idx_T1 = (torch.arange(10) % 4)[:, None]
    layer.router.selection_offset_TE = forcing_logits(idx_T1, 4)
    for training in (True, False):
        routing = layer.router.train(training)(x_TD)
        assert routing.expert_A.tolist() == idx_T1[:, 0].tolist()
        p = torch.softmax(x_TD @ layer.router.w_gate_ED.detach().t(), -1)
        torch.testing.assert_close(routing.weight_A.detach(), p.gather(1, idx_T1)[:, 0])
        torch.testing.assert_close(layer.router.last_log_prob_T.detach(), p.gather(1, idx_T1)[:, 0].log())
