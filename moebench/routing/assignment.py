"""What a router decides, in one shape every variant and every dispatch backend shares.

A routing is a flat list of A (token, expert, weight) assignments. Token-choice routers emit
A = T*K of them in token-major order (a = t*K + k); expert-choice emits A = E*C in expert-major
order. Assignments refused by a full expert stay in the list with kept_A = False so shapes stay
static (CUDA-graph friendly); every backend must skip them.

Axis legend: T tokens, E experts, K experts per token, A assignments.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Routing:
    token_A: torch.Tensor  # [A] int64: which token
    expert_A: torch.Tensor  # [A] int64: which expert
    weight_A: torch.Tensor  # [A] float32: combine weight (carries the router's gradient)
    kept_A: torch.Tensor  # [A] bool: False = dropped for capacity, contributes nothing
    n_tokens: int
    n_experts: int
    capacity: int | None = None  # per-expert capacity applied, None = dropless
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def n_assignments(self) -> int:
        return self.token_A.numel()

    @classmethod
    def from_top_k(cls, idx_TK: torch.Tensor, weight_TK: torch.Tensor, n_experts: int,
                   aux_losses: dict[str, torch.Tensor] | None = None) -> "Routing":
        """Token-choice routing: K assignments per token, token-major (a = t*K + k), all kept."""
        T, K = idx_TK.shape
        return cls(token_A=torch.arange(T, device=idx_TK.device).repeat_interleave(K),
                   expert_A=idx_TK.reshape(-1), weight_A=weight_TK.reshape(-1),
                   kept_A=torch.ones(T * K, dtype=torch.bool, device=idx_TK.device),
                   n_tokens=T, n_experts=n_experts, aux_losses=aux_losses or {})


@dataclass
class RoutingStats:
    """Per-forward routing statistics, kept as tensors so collecting them never syncs the host.

    Convert with .summary() when a number is needed.
    """

    load_E: torch.Tensor  # [E] assignments routed to each expert, before capacity
    kept_load_E: torch.Tensor  # [E] assignments actually computed by each expert
    assignments_dropped: torch.Tensor  # scalar: assignments refused for capacity
    tokens_unrouted: torch.Tensor  # scalar: tokens left with no computed assignment at all
    weight_dropped: torch.Tensor  # scalar: sum of the combine weights of the refused assignments
    weight_total: torch.Tensor  # scalar: sum of the combine weights of all assignments
    n_tokens: int
    n_assignments: int
    capacity: int | None
    aux_losses: dict[str, torch.Tensor]

    @classmethod
    def from_routing(cls, routing: Routing) -> "RoutingStats":
        E, T = routing.n_experts, routing.n_tokens
        load_E = torch.bincount(routing.expert_A, minlength=E)[:E]
        kept_expert_A = routing.expert_A[routing.kept_A] if routing.kept_A.numel() else routing.expert_A
        kept_load_E = torch.bincount(kept_expert_A, minlength=E)[:E]
        routed_T = torch.zeros(T, dtype=torch.bool, device=routing.token_A.device)
        routed_T[routing.token_A[routing.kept_A]] = True
        # The weights the combine would have used had each assignment been kept: no layer renormalises
        # weight_A after dropping (docs/formulas.md#capacity-and-drops). Summed in fp64: a frac of 1e-7 stays visible.
        weight_A = routing.weight_A.detach().double()
        return cls(
            load_E=load_E,
            kept_load_E=kept_load_E,
            assignments_dropped=(~routing.kept_A).sum(),
            tokens_unrouted=T - routed_T.sum(),
            weight_dropped=torch.where(routing.kept_A, 0.0, weight_A).sum(),  # no boolean index: no host sync
            weight_total=weight_A.sum(),
            n_tokens=T,
            n_assignments=routing.n_assignments,
            capacity=routing.capacity,
            aux_losses=routing.aux_losses,  # shared, so losses added after the forward show here too
        )

    def dropped_weight_frac(self) -> float:
        """Dropped routing-weight mass: sum of w_a over refused assignments / sum of w_a over all of them.

        drop_rate counts refusals; this weighs each by the combine weight it would have had, so a policy
        that refuses lighter assignments scores lower at the same count (docs/formulas.md#capacity-and-drops:
        `probs` does when it ranks by the combine weight). 0 when nothing carries weight (an empty routing).
        """
        total = self.weight_total.item()
        return self.weight_dropped.item() / total if total > 0 else 0.0

    def summary(self) -> dict[str, float]:
        """Plain numbers, under the metric names of the results schema (docs/results.md#metric-contract)."""
        load = self.kept_load_E.double()
        mean = load.mean().item() if load.numel() else 0.0
        out = {
            "drop_rate": self.assignments_dropped.item() / max(1, self.n_assignments),
            "tokens_dropped_frac": self.tokens_unrouted.item() / max(1, self.n_tokens),
            "dropped_weight_frac": self.dropped_weight_frac(),
            "load_max_over_mean": (load.max().item() / mean) if mean > 0 else 0.0,
            "load_cv": (load.std(unbiased=False).item() / mean) if mean > 0 else 0.0,
            "dead_experts": int((self.kept_load_E == 0).sum().item()),
        }
        for name, value in self.aux_losses.items():
            out[f"aux_{name}"] = float(value.detach().float().item())
        return out
