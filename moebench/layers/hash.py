"""Hash routing (Roller et al. 2021): the expert is a fixed hash of the token id; nothing is learned.

Roller et al. build a random lookup table over the vocabulary; moebench has no vocabulary size in the
spec, so it uses a seeded integer hash instead, which behaves like such a table for any id range:
    h(id)      = mix32(id + seed')                      seed' = 0x9E3779B9 * hash_seed mod 2^32
    score(t,e) = mix32(h(id_t) XOR salt_e)             salt_e = mix32(0x9E3779B9 * (e + 1) mod 2^32)
    experts(t) = the K experts with the smallest score  (rendezvous hashing)
mix32 is the 32-bit integer finaliser x ^= x >> 16; x *= 0x45d9f3b (twice), x ^= x >> 16, all mod 2^32.
For K = 1 this is a uniform, fixed map id -> expert; for K > 1 it gives K distinct experts per id.
Only the low 32 bits of an id are used. The combine weight is 1/K (1 for the paper's K = 1), so the
output scale does not grow with K. Capacity (if spec.capacity_factor is set) refuses later tokens
first (`position`; all weights are equal, so `probs` reduces to the same order).
No aux losses: there is no router to train.
Axis legend: T tokens, D model dim, E experts, K experts per token, A = T*K assignments.
"""

from __future__ import annotations

import torch
from torch import nn

from moebench.layers.routed import RoutedMoE
from moebench.routing.assignment import Routing
from moebench.routing.capacity import apply_capacity, expert_capacity, token_choice_priority
from moebench.spec import LayerSpec

MASK32 = 0xFFFFFFFF
GOLDEN32 = 0x9E3779B9
MIX_MULT = 0x45D9F3B  # < 2**27, so x * MIX_MULT < 2**59 never overflows int64


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finaliser on int64 tensors holding values in [0, 2**32)."""
    x = (((x >> 16) ^ x) * MIX_MULT) & MASK32
    x = (((x >> 16) ^ x) * MIX_MULT) & MASK32
    return (x >> 16) ^ x


def hash_experts(token_ids_T: torch.Tensor, n_experts: int, top_k: int, seed: int) -> torch.Tensor:
    """[T] int ids -> [T, K] distinct experts, a fixed function of (id, n_experts, top_k, seed)."""
    E = n_experts
    seed_mix = (GOLDEN32 * seed) & MASK32
    h_T = mix32((token_ids_T.long() + seed_mix) & MASK32)
    salt_E = mix32((torch.arange(1, E + 1, device=token_ids_T.device) * GOLDEN32) & MASK32)
    # Append the expert index so equal 32-bit scores still order deterministically (score*E + e).
    score_TE = mix32(h_T[:, None] ^ salt_E) * E + torch.arange(E, device=token_ids_T.device)
    return score_TE.topk(top_k, dim=-1, largest=False).indices


class HashRouter(nn.Module):
    def __init__(self, spec: LayerSpec):
        super().__init__()
        self.spec = spec

    def forward(self, x_TD: torch.Tensor, token_ids: torch.Tensor | None = None) -> Routing:
        spec, T, K, E = self.spec, x_TD.shape[0], self.spec.top_k, self.spec.n_experts
        if token_ids is None:
            raise ValueError("hash routing needs token_ids: call layer(x, token_ids=ids) with integer ids "
                             "shaped like x without its last dim")
        if token_ids.numel() != T:
            raise ValueError(f"hash routing: token_ids has {token_ids.numel()} elements, x has {T} tokens")
        idx_TK = hash_experts(token_ids.reshape(-1).to(x_TD.device), E, K, spec.hash_seed)
        routing = Routing(
            token_A=torch.arange(T, device=x_TD.device).repeat_interleave(K),
            expert_A=idx_TK.reshape(-1),
            weight_A=torch.full((T * K,), 1.0 / K, device=x_TD.device),
            kept_A=torch.ones(T * K, dtype=torch.bool, device=x_TD.device),
            n_tokens=T, n_experts=E,
        )
        if spec.capacity_factor is not None:
            C = expert_capacity(spec.capacity_factor, T, E, K, spec.min_capacity)
            routing = apply_capacity(routing, C, spec.drop_policy, score_A=routing.weight_A,
                                     priority_A=token_choice_priority(T, K, x_TD.device))
        return routing


class HashMoE(RoutedMoE):
    def __init__(self, spec: LayerSpec):
        super().__init__(spec, HashRouter(spec))
