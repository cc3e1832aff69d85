"""Capacity formula, drop policies against a naive loop, and the uniform-routing drop rate."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moebench.layers.token_choice import TopKRouter
from moebench.routing.assignment import Routing, RoutingStats
from moebench.routing.capacity import (
    apply_capacity,
    drop_fraction_cf1_approximation,
    expected_drop_fraction_uniform,
    expert_capacity,
    position_in_expert,
    token_choice_priority,
)
from moebench.spec import LayerSpec

# --- capacity formula -----------------------------------------------------------------------


def test_capacity_float_rounding_case():
    assert expert_capacity(1.25, 4096, 64, 2) == 160
    # 1.1 * 100 / 110 is 1.0000000000000002 in floats: a bare ceil would give 2.
    assert 1.1 * 100 * 1 / 110 > 1
    assert expert_capacity(1.1, 100, 110, 1) == 1
    assert expert_capacity(1.1, 100, 11, 1) == 10
    assert expert_capacity(1.0, 4096, 64, 1) == 64
    assert expert_capacity(1.1, 100, 8, 1) == 14  # 13.75 -> 14
    assert expert_capacity(0.01, 10, 8, 1) == 1  # ceil of a small positive value
    assert expert_capacity(1.0, 16, 8, 1, min_capacity=4) == 4  # Mesh-TF style floor
    assert expert_capacity(2.0, 4096, 64, 1, min_capacity=4) == 128


@settings(max_examples=200)
@given(cf=st.sampled_from(["0.5", "0.75", "1", "1.1", "1.25", "1.5", "2", "3.3"]),
       T=st.integers(1, 70000), E=st.integers(1, 512), K=st.integers(1, 8), floor=st.integers(0, 8))
def test_capacity_matches_exact_rational_ceil(cf, T, E, K, floor):
    exact = math.ceil(Fraction(cf) * T * K / E)  # the decimal the user wrote, in exact arithmetic
    assert expert_capacity(float(cf), T, E, K, floor) == max(floor, exact)


# --- drop policies against a naive loop -------------------------------------------------------


def naive_keep(experts_TK: list[list[int]], scores_TK: list[list[float]], capacity: int, policy: str,
               n_experts: int) -> list[list[bool]]:
    """Serve assignments one by one in policy order; an expert refuses once it holds `capacity`."""
    T, K = len(experts_TK), len(experts_TK[0])
    order = [(t, k) for k in range(K) for t in range(T)]  # position: first choices first, token order
    if policy == "probs":
        order = sorted(order, key=lambda tk: -scores_TK[tk[0]][tk[1]])  # stable: ties keep position order
    used = [0] * n_experts
    keep = [[False] * K for _ in range(T)]
    for t, k in order:
        e = experts_TK[t][k]
        if used[e] < capacity:
            used[e] += 1
            keep[t][k] = True
    return keep


@pytest.mark.parametrize("policy", ["position", "probs"])
@settings(max_examples=40)
@given(T=st.integers(1, 40), E=st.integers(1, 6), K=st.integers(1, 3), C=st.integers(0, 12), seed=st.integers(0, 99))
def test_apply_capacity_matches_naive(policy, T, E, K, C, seed):
    K = min(K, E)
    g = torch.Generator().manual_seed(seed)
    idx_TK = torch.rand(T, E, generator=g).argsort(dim=-1)[:, :K]  # K distinct experts per token
    score_TK = torch.randint(0, 4, (T, K), generator=g).float() / 4  # coarse: many ties
    routing = Routing(torch.arange(T).repeat_interleave(K), idx_TK.reshape(-1), score_TK.reshape(-1),
                      torch.ones(T * K, dtype=torch.bool), T, E)
    out = apply_capacity(routing, C, policy, score_A=routing.weight_A, priority_A=token_choice_priority(T, K, "cpu"))
    expected = naive_keep(idx_TK.tolist(), score_TK.tolist(), C, policy, E)
    assert out.kept_A.reshape(T, K).tolist() == expected
    assert out.capacity == C


def test_token_choice_priority_serves_first_choices_first():
    # rank(t, k) = k*T + t, listed token-major (a = t*K + k)
    assert token_choice_priority(3, 2, "cpu").tolist() == [0, 3, 1, 4, 2, 5]


def test_position_in_expert_matches_naive():
    g = torch.Generator().manual_seed(1)
    expert_A = torch.randint(0, 5, (60,), generator=g)
    priority_A = torch.randperm(60, generator=g)
    pos_A = position_in_expert(expert_A, priority_A, 5)
    for a in range(60):
        before = sum(1 for b in range(60) if expert_A[b] == expert_A[a] and priority_A[b] < priority_A[a])
        assert pos_A[a].item() == before


def test_invalid_policy_names_the_allowed_values():
    routing = Routing(torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long), torch.ones(1),
                      torch.ones(1, dtype=torch.bool), 1, 1)
    with pytest.raises(ValueError, match="position, probs"):
        apply_capacity(routing, 1, "random", routing.weight_A, torch.zeros(1, dtype=torch.long))


# --- expected drop fraction under uniform routing ------------------------------------------------


def test_uniform_drop_fraction_reference_value():
    # docs/formulas.md#capacity-and-drops: T=4096, E=64, K=1, CF=1: about 4.9% by the normal approximation.
    approx = drop_fraction_cf1_approximation(4096, 64, 1)
    exact = expected_drop_fraction_uniform(4096, 64, 1, 1.0)
    assert approx == pytest.approx(0.0495, abs=5e-4)
    # the approximation drops the continuity correction; the exact binomial value sits a little lower
    assert exact == pytest.approx(approx, rel=0.05)


def test_uniform_drop_fraction_matches_exact_rational_binomial():
    """Small case in exact rational arithmetic: E * E[max(0, X - C)] / (K*T), X ~ Binomial(T, K/E)."""
    for T, E, K, cf in [(64, 8, 1, 1.0), (64, 8, 2, 1.25), (40, 4, 1, 0.5), (30, 3, 3, 1.0)]:
        C = expert_capacity(cf, T, E, K)
        p = Fraction(K, E)
        excess = sum((x - C) * math.comb(T, x) * p**x * (1 - p) ** (T - x) for x in range(C + 1, T + 1))
        expected = float(E * excess / (K * T))
        assert expected_drop_fraction_uniform(T, E, K, cf) == pytest.approx(expected, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("T,E,K,cf", [(4096, 64, 1, 1.0), (1024, 16, 2, 1.0)])
def test_uniform_drop_fraction_matches_monte_carlo_through_topk_router(T, E, K, cf):
    """Route i.i.d. N(0,1) logits (identity gate) through the real TopKRouter with capacity: each token
    then picks K distinct experts uniformly at random, which is the formula's assumption."""
    trials = 30
    router = TopKRouter(LayerSpec(d_model=E, n_experts=E, top_k=K, capacity_factor=cf)).eval()
    with torch.no_grad():
        router.w_gate_ED.copy_(torch.eye(E))
    g = torch.Generator().manual_seed(7)
    rates = []
    with torch.no_grad():
        for _ in range(trials):
            stats = RoutingStats.from_routing(router(torch.randn(T, E, generator=g)))
            rates.append(stats.assignments_dropped.item() / (T * K))
    rates_t = torch.tensor(rates, dtype=torch.float64)
    mean, sem = rates_t.mean().item(), rates_t.std().item() / math.sqrt(trials)
    expected = expected_drop_fraction_uniform(T, E, K, cf)
    assert abs(mean - expected) < 4 * sem + 1e-4, (mean, expected, sem)


def test_already_refused_assignments_take_no_capacity():
    # three assignments to expert 0; the first was refused before capacity (e.g. GShard's random policy)
    routing = Routing(torch.arange(3), torch.zeros(3, dtype=torch.long), torch.ones(3),
                      torch.tensor([False, True, True]), 3, 1)
    out = apply_capacity(routing, 2, "position", routing.weight_A, torch.arange(3))
    assert out.kept_A.tolist() == [False, True, True]
