"""Hash routing (Roller 2021): a fixed, seeded function of the token id, checked against plain ints."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moebench.dispatch.common import ffn
from moebench.layers import build_layer
from moebench.layers.hash import HashMoE, hash_experts
from moebench.spec import LayerSpec

SMALL = dict(variant="hash", d_model=12, d_ff=8, n_experts=8, top_k=1, backend="loop")


def make(seed: int = 0, **fields) -> HashMoE:
    torch.manual_seed(seed)
    return build_layer(LayerSpec(**{**SMALL, **fields}))


def mix32_int(x: int) -> int:
    """The documented finaliser on Python ints (no overflow possible)."""
    x = (((x >> 16) ^ x) * 0x45D9F3B) % 2**32
    x = (((x >> 16) ^ x) * 0x45D9F3B) % 2**32
    return (x >> 16) ^ x


def naive_hash_experts(token_id: int, E: int, K: int, seed: int) -> list[int]:
    """Rendezvous hashing as the module docstring writes it: the K experts with the smallest score."""
    h = mix32_int((token_id + 0x9E3779B9 * seed) % 2**32)
    score = [mix32_int(h ^ mix32_int((0x9E3779B9 * (e + 1)) % 2**32)) for e in range(E)]
    return sorted(range(E), key=lambda e: (score[e], e))[:K]


@settings(max_examples=30)
@given(E=st.integers(1, 64), K=st.integers(1, 4), seed=st.integers(0, 2**40),
       ids=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=20))
def test_matches_plain_int_reference(E, K, seed, ids):
    K = min(K, E)
    got = hash_experts(torch.tensor(ids), E, K, seed).tolist()
    assert got == [naive_hash_experts(i, E, K, seed) for i in ids]


def test_same_id_same_expert_and_experts_distinct():
    ids_T = torch.tensor([5, 17, 5, 99, 17, 5, 1000, 99])
    idx_TK = hash_experts(ids_T, 16, 3, seed=0)
    for a in range(8):
        for b in range(8):
            if ids_T[a] == ids_T[b]:
                assert idx_TK[a].tolist() == idx_TK[b].tolist()
        assert len(set(idx_TK[a].tolist())) == 3  # K distinct experts


def test_seed_changes_the_map_deterministically():
    ids_T = torch.arange(1000)
    a, b = hash_experts(ids_T, 8, 1, seed=0), hash_experts(ids_T, 8, 1, seed=0)
    assert torch.equal(a, b)
    c = hash_experts(ids_T, 8, 1, seed=1)
    assert (a != c).float().mean().item() > 0.7  # a new seed is a new map (7/8 differ by chance)


@pytest.mark.parametrize("E,K", [(8, 1), (64, 1), (16, 2)])
def test_loads_are_uniform_over_a_vocabulary(E, K):
    """Consecutive ids (a vocabulary) spread like independent uniform draws: chi-square test."""
    n = 500 * E
    load_E = torch.bincount(hash_experts(torch.arange(n), E, K, seed=0).reshape(-1), minlength=E).double()
    expected = n * K / E
    chi2 = ((load_E - expected) ** 2 / expected).sum().item()
    assert chi2 < E - 1 + 5 * (2 * (E - 1)) ** 0.5  # mean E-1, sd sqrt(2(E-1)): 5 sd margin


def test_layer_matches_per_token_reference_and_batch_shape():
    layer = make(1, top_k=2).eval()
    x = torch.randn(2, 6, 12)
    ids = torch.randint(0, 50000, (2, 6))
    y = layer(x, token_ids=ids)
    assert y.shape == x.shape
    e = layer.experts
    for b in range(2):
        for t in range(6):
            y_ref = torch.zeros(12, dtype=torch.float64)
            for i in naive_hash_experts(ids[b, t].item(), 8, 2, 0):
                y_ref += 0.5 * ffn(x[b, t][None].double(), e.w_in_EID[i].double(), e.w_out_EDF[i].double(),
                                   "swiglu")[0]
            torch.testing.assert_close(y[b, t].double(), y_ref, rtol=1e-4, atol=1e-5)


def test_routing_ignores_x_and_has_no_parameters():
    layer = make(2)
    ids = torch.arange(10)
    r1, r2 = layer.router(torch.randn(10, 12), token_ids=ids), layer.router(torch.randn(10, 12), token_ids=ids)
    assert torch.equal(r1.expert_A, r2.expert_A) and torch.all(r1.weight_A == 1.0)
    assert list(layer.router.parameters()) == []


def test_capacity_drops_later_tokens_first():
    layer = make(3, n_experts=2, capacity_factor=1.0).eval()
    ids = torch.full((10,), 7)  # one id repeated: all ten tokens hash to the same expert
    y = layer(torch.randn(10, 12), token_ids=ids)
    kept_T = y.abs().sum(-1) > 0
    assert kept_T.tolist() == [True] * 5 + [False] * 5  # C = ceil(10*1/2) = 5, first come first served
    assert layer.last_stats.assignments_dropped.item() == 5


def test_token_ids_are_required():
    layer = make()
    with pytest.raises(ValueError, match="token_ids"):
        layer(torch.randn(4, 12))
    with pytest.raises(ValueError, match="token_ids"):
        layer(torch.randn(4, 12), token_ids=torch.arange(3))
