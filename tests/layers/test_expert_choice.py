"""Expert choice (Zhou 2022) against a per-expert reference loop, and its invariants."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moebench.dispatch.common import ffn
from moebench.layers import build_layer
from moebench.layers.expert_choice import ExpertChoiceMoE, expert_choice_routing, tokens_per_expert
from moebench.routing.assignment import RoutingStats
from moebench.spec import LayerSpec

SMALL = dict(variant="expert_choice", d_model=12, d_ff=8, n_experts=4, backend="loop")


def make(seed: int = 0, **fields) -> ExpertChoiceMoE:
    torch.manual_seed(seed)
    return build_layer(LayerSpec(**{**SMALL, **fields}))


def naive_expert_choice(logits_TE: torch.Tensor, k: int) -> list[tuple[int, int, float]]:
    """[(token, expert, weight)]: S = softmax over experts; each expert takes its k best tokens."""
    T, E = logits_TE.shape
    S = []
    for row in logits_TE.double().tolist():
        z = sum(math.exp(v) for v in row)
        S.append([math.exp(v) / z for v in row])
    out = []
    for e in range(E):
        best = sorted(range(T), key=lambda t: -S[t][e])[:k]
        out += [(t, e, S[t][e]) for t in best]
    return out


def test_tokens_per_expert_rounding():
    assert tokens_per_expert(4096, 64, 2.0) == 128  # T*c/E exactly
    assert tokens_per_expert(4096, 64, 1.25) == 80
    assert tokens_per_expert(7, 4, 2.0) == 4  # 3.5 -> ceil
    assert tokens_per_expert(100, 64, 0.01) == 1  # at least one token
    assert tokens_per_expert(10, 2, 8.0) == 10  # at most T
    assert tokens_per_expert(100, 110, 1.1) == 1  # 1.0000000000000002 in floats is still 1


@settings(max_examples=30)
@given(T=st.integers(1, 25), E=st.integers(2, 6),  # E=1: every score is 1, the choice is a tie
       c=st.sampled_from([0.5, 1.0, 2.0, 3.0]), seed=st.integers(0, 999))
def test_routing_matches_naive_and_every_expert_takes_exactly_k(T, E, c, seed):
    logits_TE = torch.randn(T, E, generator=torch.Generator().manual_seed(seed)) * 2
    k = tokens_per_expert(T, E, c)
    routing = expert_choice_routing(logits_TE, c)
    got = sorted(zip(routing.token_A.tolist(), routing.expert_A.tolist(), routing.weight_A.tolist(), strict=True))
    expected = sorted(naive_expert_choice(logits_TE, k))
    assert [g[:2] for g in got] == [x[:2] for x in expected]
    assert [g[2] for g in got] == pytest.approx([x[2] for x in expected], rel=1e-5)
    assert routing.n_assignments == E * k and routing.kept_A.all() and routing.capacity == k
    assert torch.bincount(routing.expert_A, minlength=E).tolist() == [k] * E  # perfect balance
    for e in range(E):  # an expert never takes the same token twice
        assert routing.token_A[routing.expert_A == e].unique().numel() == k


def test_layer_matches_reference_and_counts_unrouted_tokens():
    layer = make(1, expert_capacity_c=1.0).eval()
    x_TD = torch.randn(20, 12)
    y = layer(x_TD)
    logits_TE = x_TD.double() @ layer.router.w_gate_ED.detach().double().t()
    assignments = naive_expert_choice(logits_TE, 5)
    e = layer.experts
    y_ref = torch.zeros(20, 12, dtype=torch.float64)
    for t, i, w in assignments:
        y_ref[t] += w * ffn(x_TD[t:t + 1].double(), e.w_in_EID[i].double(), e.w_out_EDF[i].double(), "swiglu")[0]
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-4, atol=1e-5)
    unrouted = 20 - len({t for t, _, _ in assignments})
    stats = layer.last_stats
    assert stats.tokens_unrouted.item() == unrouted
    assert stats.assignments_dropped.item() == 0
    assert stats.summary()["load_cv"] == 0.0
    assert torch.all(y[[t for t in range(20) if t not in {a[0] for a in assignments}]] == 0)


def test_a_token_can_get_several_experts_or_none():
    probs_TE = torch.tensor([[0.50, 0.45, 0.05],  # wanted by experts 0 and 1
                             [0.45, 0.50, 0.05],  # wanted by experts 0 and 1
                             [0.05, 0.05, 0.90],  # expert 2
                             [0.04, 0.04, 0.92],  # expert 2
                             [0.10, 0.10, 0.80],  # nobody's top 2
                             [0.10, 0.10, 0.80]])
    routing = expert_choice_routing(probs_TE.log(), 1.0)  # k = 6*1/3 = 2
    assert sorted(zip(routing.expert_A.tolist(), routing.token_A.tolist(), strict=True)) == [
        (0, 0), (0, 1), (1, 0), (1, 1), (2, 2), (2, 3)]
    stats = RoutingStats.from_routing(routing)
    assert stats.tokens_unrouted.item() == 2 and stats.assignments_dropped.item() == 0


def test_gradient_flows_through_the_weights():
    layer = make(3).train()
    layer(torch.randn(8, 12)).sum().backward()
    assert layer.router.w_gate_ED.grad is not None and layer.router.w_gate_ED.grad.abs().sum() > 0


def test_spec_rejects_noisy_gating():
    with pytest.raises(ValueError, match="noisy_gating"):
        LayerSpec(variant="expert_choice", noisy_gating=True)


def test_expert_choice_drops_no_routing_weight():
    layer = make(1, expert_capacity_c=0.5).eval()
    layer(torch.randn(20, 12))
    summary = layer.last_stats.summary()
    assert summary["tokens_dropped_frac"] > 0  # tokens no expert picked are not refused assignments
    assert summary["drop_rate"] == summary["dropped_weight_frac"] == 0.0
