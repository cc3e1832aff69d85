"""RoutingStats against hand counts: the dropped routing-weight mass beside the dropped count."""

from __future__ import annotations

import pytest
import torch

from moebench.routing.assignment import Routing, RoutingStats
from moebench.routing.capacity import apply_capacity, token_choice_priority

# T = 4 tokens, K = 2, E = 2, capacity 2: each expert is wanted 4 times, so each refuses 2.
IDX_TK = [[0, 1], [0, 1], [0, 1], [1, 0]]
WEIGHT_TK = [[0.6, 0.4], [0.9, 0.1], [0.7, 0.3], [0.8, 0.2]]


def hand_routing(policy: str) -> Routing:
    weight_TK = torch.tensor(WEIGHT_TK)
    routing = Routing.from_top_k(torch.tensor(IDX_TK), weight_TK, n_experts=2)
    return apply_capacity(routing, 2, policy, score_A=weight_TK.reshape(-1),
                          priority_A=token_choice_priority(4, 2, torch.device("cpu")))


# position serves ranks k*T + t: expert 0 keeps t0k0 (0.6), t1k0 (0.9), refuses t2k0 (0.7), t3k1 (0.2);
#   expert 1 keeps t3k0 (0.8), t0k1 (0.4), refuses t1k1 (0.1), t2k1 (0.3)   -> (0.7+0.2+0.1+0.3) / 4.0
# probs keeps the heaviest: expert 0 keeps 0.9, 0.7, refuses 0.6, 0.2; expert 1 keeps 0.8, 0.4,
#   refuses 0.1, 0.3                                                          -> (0.6+0.2+0.1+0.3) / 4.0
@pytest.mark.parametrize(("policy", "dropped_mass"), [("position", 1.3), ("probs", 1.2)])
def test_dropped_weight_frac_matches_hand_count(policy, dropped_mass):
    summary = RoutingStats.from_routing(hand_routing(policy)).summary()
    assert summary["drop_rate"] == 4 / 8  # the same count under both policies
    assert summary["dropped_weight_frac"] == pytest.approx(dropped_mass / 4.0, rel=1e-6)


def test_probs_ranks_by_the_score_before_renormalisation_so_it_can_drop_more_weight():
    # Token choice with K = 2 ranks `probs` by the router's score over all E, but combines with the
    # weights renormalised over each token's pair. One expert (0), capacity 1, two tokens want it:
    #   token 0: expert 0 is its first choice, score 0.30 of a pair (0.30, 0.25) -> weight 0.545
    #   token 1: expert 0 is its second choice, score 0.35 of a pair (0.60, 0.35) -> weight 0.368
    # position serves first choices first and refuses token 1's (0.368); probs keeps the higher score
    # (token 1's 0.35) and refuses token 0's first choice (0.545): more weight lost at the same count.
    score_TK = torch.tensor([[0.30, 0.25], [0.60, 0.35]])
    weight_TK = score_TK / score_TK.sum(-1, keepdim=True)
    idx_TK = torch.tensor([[0, 1], [2, 0]])
    frac, priority_A = {}, token_choice_priority(2, 2, torch.device("cpu"))
    for policy in ("position", "probs"):
        routing = apply_capacity(Routing.from_top_k(idx_TK, weight_TK, n_experts=3), 1, policy,
                                 score_A=score_TK.reshape(-1), priority_A=priority_A)
        summary = RoutingStats.from_routing(routing).summary()
        assert summary["drop_rate"] == 1 / 4
        frac[policy] = summary["dropped_weight_frac"]
    assert frac["position"] == pytest.approx((0.35 / 0.95) / 2.0, rel=1e-6)
    assert frac["probs"] == pytest.approx((0.30 / 0.55) / 2.0, rel=1e-6)


def test_assignments_refused_before_capacity_count_with_their_weight():
    # a GShard-style random refusal (kept False from the start) is a dropped assignment with its weight
    routing = Routing.from_top_k(torch.tensor([[0, 1], [1, 0]]), torch.tensor([[0.75, 0.25], [0.5, 0.5]]), 2)
    routing.kept_A = torch.tensor([True, False, True, True])
    summary = RoutingStats.from_routing(routing).summary()
    assert summary["drop_rate"] == 1 / 4
    assert summary["dropped_weight_frac"] == pytest.approx(0.25 / 2.0)


def test_nothing_dropped_and_an_empty_routing_give_zero():
    kept_all = Routing.from_top_k(torch.tensor([[0, 1]]), torch.tensor([[0.5, 0.5]]), 2)
    empty = Routing.from_top_k(torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, 2), 2)
    assert RoutingStats.from_routing(kept_all).summary()["dropped_weight_frac"] == 0.0
    assert RoutingStats.from_routing(empty).summary()["dropped_weight_frac"] == 0.0


def test_stats_keep_the_mass_as_tensors_without_gradient():
    weight_TK = torch.tensor(WEIGHT_TK, requires_grad=True)
    routing = Routing.from_top_k(torch.tensor(IDX_TK), weight_TK, n_experts=2)
    stats = RoutingStats.from_routing(routing)
    assert torch.is_tensor(stats.weight_dropped) and not stats.weight_dropped.requires_grad
    assert stats.weight_total.item() == pytest.approx(4.0)
