"""Lifelong-MoE (Chen et al. 2023): a token-choice top-K MoE whose expert set grows over time.

    expand(n_new): E -> E + n_new experts and gate rows. Everything that existed before is frozen;
    K is unchanged, so the compute per token stays K experts while capacity (total parameters) grows.
Routing: logits = x [W_frozen; W_new]^T; softmax (or sigmoid) scores, keep top-K, renormalise if
    spec.renormalize; Switch load-balance and router z-loss aux losses; optional capacity (C uses the
    current E). Same math as token_choice.py; TopKRouter is not reused because its gate is one [E, D]
    Parameter, which cannot be partly frozen: a grad-masking hook would zero the gradient but AdamW's
    weight decay and momentum would still move the frozen rows.
Freezing: each expanding weight is two Parameters, `frozen` [E_old, ...] (requires_grad=False: its
    .grad stays None and an optimizer skips it) and `new` [E_new, ...]. Backends take one [E, ...]
    tensor, so once expanded every forward concatenates the two: one extra copy of all expert and gate
    weights per forward (none before the first expand). Shared experts, if any, keep training.
Distillation (spec.lifelong_distill = lam > 0, training forwards after an expand): aux loss
    "distill" = lam * mean_{t,d} (y - y_prev)^2, y_prev = the layer's output as it was at the last
    expand, computed without grad. No copy of the routed part is kept: the previous model *is* the
    frozen gate rows and experts (top-K over the old rows only). The shared experts keep training, so
    expand snapshots them (`previous_shared*`, frozen). Cost: one more top-K expert pass per training step.
Axis legend: T tokens, D model dim, F expert hidden dim, E experts, K experts per token, I = rows of w_in.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from moebench.dispatch.common import torch_dtype
from moebench.layers.experts import RoutedExperts
from moebench.layers.routed import RoutedMoE
from moebench.routing.assignment import Routing
from moebench.routing.capacity import apply_spec_capacity
from moebench.routing.losses import router_z_loss, switch_load_balance
from moebench.spec import LayerSpec


class GrowingWeight(nn.Module):
    """One [E, ...] weight kept as frozen rows followed by trainable rows."""

    def __init__(self, initial: nn.Parameter):
        super().__init__()
        self.frozen = nn.Parameter(initial.detach().new_empty(0, *initial.shape[1:]), requires_grad=False)
        self.new = initial

    def full(self) -> torch.Tensor:
        return self.new if self.frozen.shape[0] == 0 else torch.cat([self.frozen, self.new])

    @torch.no_grad()
    def grow(self, std: float, n_new: int) -> None:
        """Freeze every current row, then append n_new trainable rows ~ N(0, std^2)."""
        self.frozen = nn.Parameter(self.full().detach().clone(), requires_grad=False)
        self.new = nn.Parameter(self.frozen.new_empty(n_new, *self.frozen.shape[1:]).normal_(std=std))


class ExpandableExperts(nn.Module):
    """RoutedExperts whose weights are GrowingWeights; same forward, same backend."""

    def __init__(self, experts: RoutedExperts, spec: LayerSpec):
        super().__init__()
        self.backend, self.activation, self.spec = experts.backend, experts.activation, spec
        self.w_in = GrowingWeight(experts.w_in_EID)
        self.w_out = GrowingWeight(experts.w_out_EDF)

    @property
    def w_in_EID(self) -> torch.Tensor:
        return self.w_in.full()

    @property
    def w_out_EDF(self) -> torch.Tensor:
        return self.w_out.full()

    @property
    def n_experts(self) -> int:
        return self.w_in.frozen.shape[0] + self.w_in.new.shape[0]

    def forward(self, x_TD: torch.Tensor, routing: Routing, frozen_only: bool = False) -> torch.Tensor:
        w_in, w_out = (self.w_in.frozen, self.w_out.frozen) if frozen_only else (self.w_in_EID, self.w_out_EDF)
        return self.backend.run(x_TD, routing, w_in, w_out, self.activation)

    def expand(self, n_new: int) -> None:
        self.w_in.grow(1 / math.sqrt(self.spec.d_model), n_new)  # the init of RoutedExperts
        self.w_out.grow(1 / math.sqrt(self.spec.d_ff), n_new)


class LifelongRouter(nn.Module):
    def __init__(self, spec: LayerSpec):
        super().__init__()
        self.spec = spec
        w_ED = torch.randn(spec.n_experts, spec.d_model, dtype=torch_dtype(spec.dtype)) / math.sqrt(spec.d_model)
        self.gate = GrowingWeight(nn.Parameter(w_ED))

    def forward(self, x_TD: torch.Tensor, token_ids: torch.Tensor | None = None) -> Routing:
        if self.training and self.spec.jitter > 0:
            x_TD = x_TD * torch.empty_like(x_TD).uniform_(1 - self.spec.jitter, 1 + self.spec.jitter)
        return self.route(x_TD, self.gate.full())

    def route(self, x_TD: torch.Tensor, w_gate_ED: torch.Tensor) -> Routing:
        """Top-K over the experts whose gate rows are given (all of them, or the frozen ones)."""
        spec, K, E = self.spec, self.spec.top_k, w_gate_ED.shape[0]
        logits_TE = F.linear(x_TD, w_gate_ED).float()
        probs_TE = torch.softmax(logits_TE, -1) if spec.score_func == "softmax" else torch.sigmoid(logits_TE)
        score_TK, idx_TK = probs_TE.topk(K, dim=-1)
        weight_TK = score_TK / score_TK.sum(-1, keepdim=True) if spec.renormalize else score_TK
        aux = {"z_loss": router_z_loss(logits_TE, spec.z_loss_coef),
               "load_balance": switch_load_balance(probs_TE, idx_TK, spec.aux_loss_coef)}
        return apply_spec_capacity(Routing.from_top_k(idx_TK, weight_TK, E, aux), spec, score_TK)

    def expand(self, n_new: int) -> None:
        self.gate.grow(1 / math.sqrt(self.spec.d_model), n_new)


class LifelongMoE(RoutedMoE):
    def __init__(self, spec: LayerSpec):
        if spec.noisy_gating:
            raise ValueError("LayerSpec.noisy_gating=True is not implemented for variant 'lifelong'")
        super().__init__(spec, LifelongRouter(spec))
        self.experts = ExpandableExperts(self.experts, spec)  # takes over the initialised weights
        self.previous_shared = self.previous_shared_gate = None

    @property
    def n_frozen(self) -> int:
        return self.router.gate.frozen.shape[0]

    def expand(self, n_new: int) -> None:
        """Freeze all current experts and gate rows, add n_new trainable ones; K stays the same.

        The trainable Parameters are new objects: build the optimizer again after expanding.
        """
        if not isinstance(n_new, int) or n_new < 1:
            raise ValueError(f"expand(n_new={n_new!r}) is invalid: n_new must be a positive integer")
        spec = self.spec.replace(n_experts=self.spec.n_experts + n_new)  # validates before anything changes
        self.router.expand(n_new)
        self.experts.expand(n_new)
        self.spec = self.router.spec = self.experts.spec = spec
        if spec.lifelong_distill > 0 and self.shared is not None:
            self.previous_shared = copy.deepcopy(self.shared).requires_grad_(False)
            self.previous_shared_gate = copy.deepcopy(self.shared_gate)
            if self.previous_shared_gate is not None:
                self.previous_shared_gate.requires_grad_(False)

    @torch.no_grad()
    def previous_output(self, x_TD: torch.Tensor) -> torch.Tensor:
        """The layer as it was at the last expand: frozen gate rows and experts, snapshot of the shared."""
        y_TD = self.experts(x_TD, self.router.route(x_TD, self.router.gate.frozen), frozen_only=True)
        y_TD = y_TD * self.spec.routed_scaling
        if self.previous_shared is not None:
            shared_TD = self.previous_shared(x_TD)
            if self.previous_shared_gate is not None:
                shared_TD = torch.sigmoid(self.previous_shared_gate(x_TD)) * shared_TD
            y_TD = y_TD + shared_TD
        return y_TD

    def forward(self, x: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:
        y = super().forward(x, token_ids)
        if self.training and self.spec.lifelong_distill > 0 and self.n_frozen > 0:
            y_prev_TD = self.previous_output(x.reshape(-1, x.shape[-1]))
            gap = (y.reshape(y_prev_TD.shape).float() - y_prev_TD.float()).square().mean()
            self.aux_losses["distill"] = self.spec.lifelong_distill * gap  # the same dict as last_stats
        return y
