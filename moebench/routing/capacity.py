"""Expert capacity, the drop policies that enforce it, and the drop rate uniform routing predicts.

Capacity per expert C = ceil(CF * T * K / E), floored at min_capacity. Other codebases
use other rules (Mesh-TF, DeepSpeed: docs/formulas.md#capacity-and-drops); results record which C was used.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from moebench.routing.assignment import Routing

if TYPE_CHECKING:
    from moebench.spec import LayerSpec


def expert_capacity(capacity_factor: float, n_tokens: int, n_experts: int, top_k: int,
                    min_capacity: int = 0) -> int:
    """C = ceil(CF * T * K / E), at least min_capacity."""
    # round() first so float noise cannot add a slot: 1.1 * 100 / 110 is 1.0000000000000002, ceil -> 2
    return max(min_capacity, math.ceil(round(capacity_factor * n_tokens * top_k / n_experts, 9)))


def token_choice_priority(n_tokens: int, top_k: int, device: torch.device) -> torch.Tensor:
    """Priority rank for the `position` policy on token-major assignments (a = t*K + k).

    All first choices are served before any second choice, each in token order (GShard; also what
    DeepSpeed and Tutel do): rank(t, k) = k*T + t. Lower rank = served first.
    """
    t = torch.arange(n_tokens, device=device).repeat_interleave(top_k)
    k = torch.arange(top_k, device=device).repeat(n_tokens)
    return k * n_tokens + t


def position_in_expert(expert_A: torch.Tensor, priority_A: torch.Tensor, n_experts: int) -> torch.Tensor:
    """For each assignment, how many assignments of the same expert come before it by priority."""
    A = expert_A.numel()
    # Sort by (expert, priority): one stable sort on a combined key, O(A log A), no [A, E] one-hot.
    rank_A = torch.empty_like(priority_A)
    rank_A[torch.argsort(priority_A, stable=True)] = torch.arange(A, device=expert_A.device)
    order = torch.argsort(expert_A * A + rank_A, stable=True)
    # scatter_add, not bincount: bincount sizes its output from the data, a host sync on CUDA
    counts_E = torch.zeros(n_experts, dtype=torch.long, device=expert_A.device).scatter_add_(
        0, expert_A, torch.ones_like(expert_A))
    starts_E = torch.cumsum(counts_E, 0) - counts_E
    pos_sorted = torch.arange(A, device=expert_A.device) - starts_E[expert_A[order]]
    pos_A = torch.empty_like(pos_sorted)
    pos_A[order] = pos_sorted
    return pos_A


def apply_capacity(routing: Routing, capacity: int, policy: str, score_A: torch.Tensor,
                   priority_A: torch.Tensor) -> Routing:
    """Mark assignments beyond each expert's capacity as dropped.

    policy `position`: served in priority_A order (first come); `probs`: highest score_A first, so
    the lowest-scored assignments are dropped (ties broken by priority_A).
    """
    if policy == "probs":
        # Stable sort by descending score after a sort by priority keeps ties in position order.
        by_pos = torch.argsort(priority_A, stable=True)
        order = by_pos[torch.argsort(-score_A.detach()[by_pos].float(), stable=True)]
        priority_A = torch.empty_like(priority_A)
        priority_A[order] = torch.arange(order.numel(), device=order.device)
    elif policy != "position":
        raise ValueError(f"drop_policy={policy!r} is invalid: allowed values are position, probs")
    # Assignments already refused (e.g. GShard's random second choices) take no slot: count them
    # under a spare expert index E that has no capacity limit applied.
    E = routing.n_experts
    slot_expert_A = torch.where(routing.kept_A, routing.expert_A, torch.full_like(routing.expert_A, E))
    pos_A = position_in_expert(slot_expert_A, priority_A, E + 1)
    routing.kept_A = routing.kept_A & (pos_A < capacity)
    routing.capacity = capacity
    return routing


def apply_spec_capacity(routing: Routing, spec: "LayerSpec", score_TK: torch.Tensor) -> Routing:
    """The spec's capacity rule on token-major top-K routing: nothing when capacity_factor is None,
    else C = ceil(CF*T*K/E) (at least min_capacity) under spec.drop_policy. score_TK is the router's
    score of each choice before any renormalisation (what the `probs` policy ranks by)."""
    if spec.capacity_factor is None:
        return routing
    T, K = score_TK.shape
    C = expert_capacity(spec.capacity_factor, T, routing.n_experts, K, spec.min_capacity)
    return apply_capacity(routing, C, spec.drop_policy, score_A=score_TK.reshape(-1),
                          priority_A=token_choice_priority(T, K, score_TK.device))


def expected_drop_fraction_uniform(n_tokens: int, n_experts: int, top_k: int, capacity_factor: float,
                                   min_capacity: int = 0) -> float:
    """Expected fraction of assignments dropped when each token picks K distinct experts uniformly.

    Each expert's load X ~ Binomial(T, K/E); E[dropped] = E * E[max(0, X - C)]; divide by K*T.
    Computed exactly in log space (docs/formulas.md#capacity-and-drops).
    """
    T, E, K = n_tokens, n_experts, top_k
    C = expert_capacity(capacity_factor, T, E, K, min_capacity)
    p = K / E
    if p >= 1.0:
        return max(0.0, (T - C) / T)
    log_p, log_q = math.log(p), math.log1p(-p)
    excess = 0.0
    for x in range(C + 1, T + 1):
        log_pmf = math.lgamma(T + 1) - math.lgamma(x + 1) - math.lgamma(T - x + 1) + x * log_p + (T - x) * log_q
        excess += (x - C) * math.exp(log_pmf)
    return E * excess / (K * T)


def drop_fraction_cf1_approximation(n_tokens: int, n_experts: int, top_k: int) -> float:
    """Normal approximation at CF = 1: sqrt((1 - K/E) / (2*pi*K*T/E)) (docs/formulas.md#capacity-and-drops)."""
    mean = top_k * n_tokens / n_experts
    return math.sqrt((1 - top_k / n_experts) / (2 * math.pi * mean))
