"""RoutedMoE: the skeleton every routed variant shares.

    y = routed_scaling * experts(x, router(x))  [+ shared(x)]

A variant is a router (a module x_TD -> Routing, see moebench.routing.assignment) plugged into this
skeleton; capacity and drops are the router's business, dispatch is the backend's. After every
forward, `aux_losses` holds that forward's aux losses (for training) and, while `collect_stats` is
True, `last_stats` its RoutingStats (loads, drops). Benchmarks switch collect_stats off while timing:
the statistics are moebench's bookkeeping, not a cost of the design being measured.
Axis legend: T tokens, D model dim.
"""

from __future__ import annotations

import torch
from torch import nn

from moebench.dispatch.common import torch_dtype
from moebench.layers.experts import FFN, RoutedExperts
from moebench.measure.code_path import note
from moebench.measure.phases import phase
from moebench.routing.assignment import RoutingStats
from moebench.spec import LayerSpec


class RoutedMoE(nn.Module):
    def __init__(self, spec: LayerSpec, router: nn.Module):
        super().__init__()
        self.spec = spec
        self.router = router
        self.experts = RoutedExperts(spec)
        self.shared = None
        self.shared_gate = None
        if spec.n_shared:
            width = spec.n_shared * (spec.shared_d_ff or spec.d_ff)  # S experts == one FFN S times wider
            self.shared = FFN(spec.d_model, width, spec.activation, torch_dtype(spec.dtype))
            if spec.shared_gate:
                self.shared_gate = nn.Linear(spec.d_model, 1, bias=False, dtype=torch_dtype(spec.dtype))
        self.last_stats: RoutingStats | None = None
        self.aux_losses: dict[str, torch.Tensor] = {}
        self.collect_stats = True

    def forward(self, x: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:
        """x: [..., D] -> y: [..., D]. token_ids ([...], int) are needed by hash routing only."""
        x_TD = x.reshape(-1, x.shape[-1])
        ids_T = token_ids.reshape(-1) if token_ids is not None else None
        with phase("router"):
            routing = self.router(x_TD, token_ids=ids_T)
        y_TD = self.experts(x_TD, routing)  # the backend times dispatch / experts / combine itself
        if self.spec.routed_scaling != 1.0:
            with phase("combine"):
                y_TD = y_TD * self.spec.routed_scaling
        if self.shared is not None:
            with phase("shared"):
                note("shared", "torch")
                shared_TD = self.shared(x_TD)
                if self.shared_gate is not None:
                    shared_TD = torch.sigmoid(self.shared_gate(x_TD)) * shared_TD
                y_TD = y_TD + shared_TD
        self.aux_losses = routing.aux_losses
        self.last_stats = RoutingStats.from_routing(routing) if self.collect_stats else None
        return y_TD.reshape(x.shape)

    def aux_loss(self) -> torch.Tensor:
        """Sum of the aux losses of the last forward (0 if it had none)."""
        losses = list(self.aux_losses.values())
        return torch.stack(losses).sum() if losses else torch.zeros(())
