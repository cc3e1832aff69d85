"""S-BASE (Clark et al. 2022): top-1 routing on a Sinkhorn-balanced score matrix.

BASE layers solve a balanced assignment (every expert gets T/E tokens); S-BASE approximates it with
Sinkhorn iterations on exp(router logits), then takes the argmax per token:
    P = diag(d0) exp(logits) diag(d1), scaled so rows sum to 1/T and columns to 1/E
    expert_t = argmax_e P[t, e]        (balancing is done without gradient: selection only)
    weight_t = probs[t, expert_t]      probs = softmax(logits) (or sigmoid, spec.score_func)
The combine weight is the router's own probability, so the router learns through it (as in
Megatron-LM's Sinkhorn router). spec.sinkhorn_iters fixed iterations, in log space, with no
convergence test (no host sync, static cost). Like BASE and Megatron-LM, balancing is applied in
training only; eval routes greedily (plain top-1 of probs). To time the Sinkhorn cost, run in train
mode (under torch.no_grad if no backward is wanted).
Capacity C = ceil(CF*T/E) when spec.capacity_factor is set (the paper uses CF 2). No aux losses: the
balancing replaces the load-balance loss.
Axis legend: T tokens, D model dim, E experts, A = T assignments.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from moebench.layers.experts import gate_weight
from moebench.layers.routed import RoutedMoE
from moebench.routing.assignment import Routing
from moebench.routing.capacity import apply_spec_capacity
from moebench.spec import LayerSpec


def sinkhorn_log(logits_TE: torch.Tensor, n_iters: int) -> torch.Tensor:
    """log P for P = diag(d0) exp(logits) diag(d1): after each iteration columns sum to exactly 1/E and
    rows approximately to 1/T (exactly once converged)."""
    T, E = logits_TE.shape
    logits_TE = logits_TE.float()
    log_d1_E = torch.zeros(E, device=logits_TE.device)
    log_d0_T = torch.zeros(T, device=logits_TE.device)
    for _ in range(n_iters):
        log_d0_T = -math.log(T) - torch.logsumexp(logits_TE + log_d1_E, dim=1)
        log_d1_E = -math.log(E) - torch.logsumexp(logits_TE + log_d0_T[:, None], dim=0)
    return logits_TE + log_d0_T[:, None] + log_d1_E


class SinkhornRouter(nn.Module):
    def __init__(self, spec: LayerSpec):
        super().__init__()
        self.spec = spec
        self.w_gate_ED = gate_weight(spec)

    def forward(self, x_TD: torch.Tensor, token_ids: torch.Tensor | None = None) -> Routing:
        spec, E = self.spec, self.spec.n_experts
        logits_TE = F.linear(x_TD, self.w_gate_ED).float()  # router math in fp32
        probs_TE = torch.softmax(logits_TE, -1) if spec.score_func == "softmax" else torch.sigmoid(logits_TE)
        if self.training:
            with torch.no_grad():
                idx_T = sinkhorn_log(logits_TE, spec.sinkhorn_iters).argmax(dim=-1)
        else:
            idx_T = probs_TE.detach().argmax(dim=-1)
        score_T1 = probs_TE.gather(1, idx_T[:, None])
        return apply_spec_capacity(Routing.from_top_k(idx_T[:, None], score_T1, E), spec, score_T1)


class SinkhornMoE(RoutedMoE):
    def __init__(self, spec: LayerSpec):
        super().__init__(spec, SinkhornRouter(spec))
