"""S-BASE (Clark 2022): Sinkhorn balancing against a plain-loop reference, and balance on skewed logits."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moebench.dispatch.common import ffn
from moebench.layers import build_layer
from moebench.layers.sinkhorn import SinkhornMoE, sinkhorn_log
from moebench.spec import LayerSpec

SMALL = dict(variant="sinkhorn", d_model=12, d_ff=8, n_experts=4, top_k=1, backend="loop")


def make(seed: int = 0, **fields) -> SinkhornMoE:
    torch.manual_seed(seed)
    return build_layer(LayerSpec(**{**SMALL, **fields}))


def naive_sinkhorn(logits: list[list[float]], n_iters: int) -> list[list[float]]:
    """Megatron-LM style: alternately rescale rows of exp(logits) to sum 1/T and columns to 1/E."""
    T, E = len(logits), len(logits[0])
    cost = [[math.exp(v) for v in row] for row in logits]
    d0, d1 = [1.0] * T, [1.0] * E
    for _ in range(n_iters):
        d0 = [1 / (T * sum(d1[e] * cost[t][e] for e in range(E))) for t in range(T)]
        d1 = [1 / (E * sum(d0[t] * cost[t][e] for t in range(T))) for e in range(E)]
    return [[d0[t] * cost[t][e] * d1[e] for e in range(E)] for t in range(T)]


@settings(max_examples=25)
@given(T=st.integers(1, 12), E=st.integers(1, 5), iters=st.integers(1, 10), seed=st.integers(0, 999))
def test_matches_naive_sinkhorn(T, E, iters, seed):
    logits_TE = torch.randn(T, E, generator=torch.Generator().manual_seed(seed)) * 3
    got = sinkhorn_log(logits_TE, iters).exp().double()
    expected = torch.tensor(naive_sinkhorn(logits_TE.double().tolist(), iters), dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-9)


def test_marginals_columns_exact_rows_converge():
    logits_TE = torch.randn(64, 8, generator=torch.Generator().manual_seed(0)) * 2
    logits_TE[:, 0] += 3  # a strong bias toward expert 0
    P = sinkhorn_log(logits_TE, 3).exp()
    torch.testing.assert_close(P.sum(0), torch.full((8,), 1 / 8))  # after every iteration
    P = sinkhorn_log(logits_TE, 200).exp()
    torch.testing.assert_close(P.sum(1), torch.full((64,), 1 / 64), rtol=1e-3, atol=1e-6)


def test_more_balanced_than_plain_top1_on_skewed_logits():
    layer = make(1, n_experts=8, sinkhorn_iters=8)
    with torch.no_grad():
        layer.router.w_gate_ED[0] += 1.5 * layer.router.w_gate_ED[1:].mean(0) + 0.3  # skew toward expert 0
    x_TD = torch.randn(512, 12) + 0.5
    with torch.no_grad():
        balanced = torch.bincount(layer.train().router(x_TD).expert_A, minlength=8).float()
        greedy = torch.bincount(layer.eval().router(x_TD).expert_A, minlength=8).float()
    assert greedy.max() / greedy.mean() > 2.0  # the skew is real
    assert balanced.max() / balanced.mean() < 1.5
    assert balanced.std() < greedy.std() / 2


def test_layer_matches_per_token_reference_in_train_and_eval():
    layer = make(2, n_experts=4, sinkhorn_iters=5)
    x_TD = torch.randn(16, 12)
    logits = (x_TD.double() @ layer.router.w_gate_ED.detach().double().t()).tolist()
    probs = [[math.exp(v) / sum(math.exp(u) for u in row) for v in row] for row in logits]
    P = naive_sinkhorn(logits, 5)
    assert any(max(range(4), key=P[t].__getitem__) != max(range(4), key=probs[t].__getitem__) for t in range(16))
    e = layer.experts
    for training in (True, False):
        y = layer.train(training)(x_TD)
        for t in range(16):
            scores = P[t] if training else probs[t]  # balanced selection in training, greedy in eval
            i = max(range(4), key=lambda j: scores[j])
            y_ref = probs[t][i] * ffn(x_TD[t:t + 1].double(), e.w_in_EID[i].double(), e.w_out_EDF[i].double(),
                                      "swiglu")[0]
            torch.testing.assert_close(y[t].double(), y_ref, rtol=1e-4, atol=1e-5)


def test_weight_is_router_prob_and_carries_gradient():
    for score in ("softmax", "sigmoid"):
        layer = make(3, score_func=score).train()
        x_TD = torch.randn(10, 12)
        routing = layer.router(x_TD)
        logits_TE = x_TD @ layer.router.w_gate_ED.detach().t()
        probs_TE = torch.softmax(logits_TE, -1) if score == "softmax" else torch.sigmoid(logits_TE)
        torch.testing.assert_close(routing.weight_A.detach(), probs_TE.gather(1, routing.expert_A[:, None])[:, 0])
        routing.weight_A.sum().backward()
        assert layer.router.w_gate_ED.grad.abs().sum() > 0


def test_capacity_factor_caps_expert_load():
    layer = make(4, n_experts=4, capacity_factor=2.0)
    with torch.no_grad():
        layer.router.w_gate_ED[0] += 5.0
    layer.eval()(torch.randn(40, 12).abs())
    assert layer.last_stats.capacity == 20
    assert layer.last_stats.kept_load_E.max().item() <= 20
    assert layer.last_stats.assignments_dropped.item() > 0


def test_spec_requires_top_1():
    with pytest.raises(ValueError, match="top_k"):
        LayerSpec(variant="sinkhorn", top_k=2)
