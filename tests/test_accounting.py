"""moebench.accounting against built layers (parameter counts, torch's FLOP counter), hand-derived
values and the published numbers of docs/formulas.md."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from moebench import accounting as acc
from moebench.layers import VARIANTS, build_layer
from moebench.routing.capacity import expected_drop_fraction_uniform, expert_capacity
from moebench.spec import VARIANTS as SPEC_VARIANTS
from moebench.spec import LayerSpec

D, F, E, K = 16, 32, 4, 2
SMALL = dict(d_model=D, d_ff=F, n_experts=E, backend="loop")
SPECS = {
    "dense": LayerSpec(variant="dense", **SMALL),
    "token_choice": LayerSpec(variant="token_choice", top_k=K, **SMALL),
    "token_choice_noisy_gelu": LayerSpec(variant="token_choice", top_k=K, noisy_gating=True, activation="gelu",
                                         **SMALL),
    "gshard": LayerSpec(variant="gshard", top_k=2, **SMALL),
    "expert_choice": LayerSpec(variant="expert_choice", expert_capacity_c=2.0, **SMALL),
    "hash": LayerSpec(variant="hash", top_k=K, **SMALL),
    "sinkhorn": LayerSpec(variant="sinkhorn", top_k=1, **SMALL),
    "rl": LayerSpec(variant="rl", top_k=1, **SMALL),
    "deepseek": LayerSpec(variant="deepseek", top_k=K, n_shared=2, shared_d_ff=8, renormalize=False, **SMALL),
    "qwen2_shared_gate": LayerSpec(variant="token_choice", top_k=K, n_shared=1, shared_d_ff=24, shared_gate=True,
                                   **SMALL),
    "lifelong": LayerSpec(variant="lifelong", top_k=K, **SMALL),
    "peer": LayerSpec(variant="peer", d_model=D, activation="gelu", peer_experts=16, peer_heads=2, peer_k=2,
                      d_key=8),
    "peer_brute_no_bn": LayerSpec(variant="peer", d_model=D, activation="relu", peer_experts=16, peer_heads=2,
                                  peer_k=3, d_key=8, peer_retrieval="brute", peer_query_batchnorm=False),
}


def test_every_variant_is_covered():
    assert {s.variant for s in SPECS.values()} == set(SPEC_VARIANTS)


@pytest.mark.parametrize("name", list(SPECS))
def test_total_params_equal_the_built_layer(name):
    spec = SPECS[name]
    if spec.variant not in VARIANTS:
        pytest.skip(f"variant {spec.variant} is not built yet")
    layer = build_layer(spec)
    assert sum(acc.layer_params(spec).values()) == sum(p.numel() for p in layer.parameters())


def _counted_flops(spec: LayerSpec, T: int) -> float:
    """FLOPs torch's FlopCounterMode sees in one eval forward (matmuls only, 2 per multiply-add)."""
    torch.manual_seed(0)
    layer = build_layer(spec).eval()
    if spec.variant == "peer":  # the C kernels' work is invisible to the counter: count the torch path
        layer.experts_impl = layer.topk_impl = "torch"
    x = torch.randn(T, spec.d_model)
    ids = torch.randint(0, 100, (T,))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        layer(x, token_ids=ids)
    return counter.get_total_flops()


@pytest.mark.parametrize("name", list(SPECS))
def test_flops_equal_torch_flop_counter(name):
    """Every matmul phase of layer_flops_per_token, times T, is what the built layer multiplies.

    Not seen by the counter (and so left out of the comparison): the combine's weighted adds and PEER's
    candidate sums, which are elementwise ops, not matmuls.
    """
    spec, T = SPECS[name], 8  # T*c/E = 4 tokens per expert for expert choice: exactly c per token
    if spec.variant not in VARIANTS:
        pytest.skip(f"variant {spec.variant} is not built yet")
    phases = acc.layer_flops_per_token(spec)
    matmul = sum(f for phase, f in phases.items() if phase not in ("combine", "candidate_topk"))
    assert _counted_flops(spec, T) == T * matmul


def test_training_flops_add_the_noise_matmul():
    """Noisy gating's W_noise matmul runs in training only (Shazeer 2017); the counter sees it then."""
    spec, T = SPECS["token_choice_noisy_gelu"], 8
    torch.manual_seed(0)
    layer = build_layer(spec).train()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        layer(torch.randn(T, D))
    phases = acc.layer_flops_per_token(spec, training=True)
    assert counter.get_total_flops() == T * (phases["router"] + phases["experts"])
    assert phases["router"] == 2 * acc.layer_flops_per_token(spec)["router"]


def test_flops_by_hand():
    spec = SPECS["deepseek"]  # swiglu: 3 matrices of D*F per expert, 2 shared experts of width 8
    f = acc.layer_flops_per_token(spec)
    assert f == {"router": 2 * D * E, "dispatch": 0, "experts": K * 6 * D * F, "combine": 2 * K * D,
                 "shared": 2 * 6 * D * 8}
    gelu = acc.layer_flops_per_token(SPECS["token_choice_noisy_gelu"])
    assert gelu["experts"] == K * 4 * D * F and gelu["router"] == 2 * D * E
    assert acc.layer_flops_per_token(SPECS["token_choice_noisy_gelu"], training=True)["router"] == 4 * D * E
    assert acc.layer_flops_per_token(SPECS["sinkhorn"], training=True)["router"] == 2 * D * E + 4 * E * 8
    assert acc.layer_flops_per_token(SPECS["hash"])["router"] == 0
    assert acc.layer_flops_per_token(SPECS["qwen2_shared_gate"])["shared"] == 6 * D * 24 + 2 * D
    peer = acc.layer_flops_per_token(SPECS["peer"])  # H=2, k=2, n_keys=4, d_key=8
    assert peer == {"query": 2 * D * 2 * 8, "subkey_scores": 2 * 2 * 4 * 8, "candidate_topk": 2 * 2 * 2,
                    "experts": 2 * 2 * 4 * D}
    assert acc.layer_flops_per_token(SPECS["peer_brute_no_bn"])["candidate_topk"] == 2 * 16


def test_params_by_hand():
    assert acc.layer_params(SPECS["token_choice"]) == {"router": E * D, "experts": E * 3 * D * F, "shared": 0}
    assert acc.layer_params(SPECS["token_choice_noisy_gelu"])["router"] == 2 * E * D
    assert acc.layer_params(SPECS["qwen2_shared_gate"])["shared"] == 3 * D * 24 + D
    assert acc.layer_params(SPECS["hash"])["router"] == 0
    peer = acc.layer_params(SPECS["peer"])  # query + BatchNorm weight/bias; keys 2 halves x 4 x 4; u, v
    assert peer == {"query": D * 2 * 8 + 2 * 2 * 8, "keys": 2 * 4 * 4, "experts": 2 * 16 * D}


def test_active_params():
    a = acc.layer_active_params(SPECS["deepseek"])
    assert a == {"router": E * D, "experts": K * 3 * D * F, "shared": 2 * 3 * D * 8}
    assert acc.layer_active_params(SPECS["expert_choice"])["experts"] == 2.0 * 3 * D * F  # c experts per token
    assert acc.layer_active_params(SPECS["dense"])["experts"] == 3 * D * F
    assert acc.layer_active_params(SPECS["peer"])["experts"] == 2 * 2 * 2 * D  # H*k rows of u and v


def test_granularity_keeps_expert_params_and_grows_the_router():
    """Krajewski: E*G experts of F/G, top K*G: same active and total expert params, router D*E*G."""
    base = LayerSpec(d_model=64, d_ff=256, n_experts=8, top_k=2)
    for G in (1, 2, 4, 8):
        fine = base.with_granularity(G)
        assert acc.layer_params(fine)["experts"] == acc.layer_params(base)["experts"]
        assert acc.layer_active_params(fine)["experts"] == acc.layer_active_params(base)["experts"]
        assert acc.layer_flops_per_token(fine)["experts"] == acc.layer_flops_per_token(base)["experts"]
        assert acc.layer_params(fine)["router"] == 64 * 8 * G


@pytest.mark.parametrize("G, share", [(8, 0.206), (16, 0.341)])
def test_krajewski_router_share_reference(G, share):
    """docs/formulas.md#granularity: D=384, E=64, c_f=6, c_r=14: G=8 -> 20.6%, G=16 -> 34.1%."""
    assert acc.krajewski_router_share(384, 64, G) == pytest.approx(share, abs=5e-4)
    assert acc.krajewski_router_share(384, 64, G) == 64 * G * 14 / (12 * 384 * 6 + 64 * G * 14)


def test_bytes_by_hand():
    """D=2, F=3, E=2, K=1, gelu, float32, T=5: every term derived by hand."""
    spec = LayerSpec(variant="token_choice", d_model=2, d_ff=3, n_experts=2, top_k=1, activation="gelu")
    b = acc.layer_bytes(spec, 5)
    touched = 2 * (1 - 0.5**5)
    assert b == pytest.approx({
        "router_weights": 2 * 2 * 4,
        "router_io": 5 * 2 * 4 + 2 * 5 * 2 * 4 + 5 * (4 + 8),  # x in, logits out + in, idx + weight out
        "dispatch": 2 * 5 * 2 * 4,  # one copy of x out and in per assignment
        "expert_weights": touched * 2 * 2 * 3 * 4,
        "expert_io": 5 * (2 + 3 + 3 + 3 + 3 + 2) * 4,
        "combine": 5 * 2 * 4 + 5 * 4 + 5 * 2 * 4,
        "shared_weights": 0, "shared_io": 0,
    })
    bf16 = acc.layer_bytes(spec, 5, dtype="bfloat16")
    assert bf16["expert_weights"] == b["expert_weights"] / 2 and bf16["dispatch"] == b["dispatch"] / 2
    assert bf16["router_io"] > b["router_io"] / 2  # logits stay float32


def test_dispatch_moves_k_copies_of_x_each_way():
    for k in (1, 2, 4):
        spec = LayerSpec(d_model=16, d_ff=8, n_experts=8, top_k=k, dtype="bfloat16")
        b = acc.layer_bytes(spec, 100)
        assert b["dispatch"] == 2 * 100 * k * 16 * 2
        assert b["combine"] == 100 * k * 16 * 2 + 100 * k * 4 + 100 * 16 * 2


def test_peer_gathers_h_k_2d_weights_per_token():
    """docs/formulas.md#peer: per token PEER reads H*k*2*D expert weights."""
    spec = LayerSpec(variant="peer", d_model=256, activation="gelu", dtype="bfloat16")  # N = 1024^2, H=8, k=16
    assert acc.layer_bytes(spec, 10)["expert_weights"] == 10 * 8 * 16 * 2 * 256 * 2


def test_experts_touched():
    assert acc.expected_experts_touched(64, 1, 2) == pytest.approx(2)
    assert acc.expected_experts_touched(64, 10_000, 2) == pytest.approx(64)
    # Monte Carlo with K distinct picks: the formula treats the K picks as independent, close for K << E
    gen = torch.Generator().manual_seed(0)
    hits = [len(set(torch.randperm(64, generator=gen)[:2].tolist() + torch.randperm(64, generator=gen)[:2].tolist()
                    + torch.randperm(64, generator=gen)[:2].tolist())) for _ in range(2000)]
    assert sum(hits) / len(hits) == pytest.approx(acc.expected_experts_touched(64, 3, 2), rel=0.01)


def test_capacity_report_uses_routing_capacity():
    spec = LayerSpec(n_experts=64, top_k=1, capacity_factor=1.0)
    r = acc.capacity_report(spec, 4096)
    assert r["capacity"] == expert_capacity(1.0, 4096, 64, 1) == 64
    assert r["expected_drop_fraction"] == expected_drop_fraction_uniform(4096, 64, 1, 1.0)
    assert r["expected_drop_fraction"] == pytest.approx(0.049, abs=0.001)  # docs/formulas.md#capacity-and-drops
    assert r["computed_assignments"] == pytest.approx(4096 * (1 - r["expected_drop_fraction"]))
    assert acc.capacity_report(LayerSpec(), 100)["capacity"] is None
    ec = acc.capacity_report(SPECS["expert_choice"], 8)
    assert (ec["capacity"], ec["computed_assignments"]) == (4, 16)
    assert ec["expected_tokens_without_expert"] == pytest.approx((1 - 4 / 8) ** 4)


def test_roofline():
    r = acc.roofline(flops=1e12, bytes_moved=1e9, peak_flops=1e14, bandwidth=1e12)
    assert (r.compute_s, r.memory_s, r.time_s, r.bound, r.intensity) == (0.01, 0.001, 0.01, "compute", 1000)
    r = acc.roofline(flops=1e9, bytes_moved=1e10, peak_flops=1e14, bandwidth=1e12)
    assert (r.time_s, r.bound) == (0.01, "memory")
    with pytest.raises(ValueError, match="bandwidth"):
        acc.roofline(1, 1, 1, 0)
    peer = LayerSpec(variant="peer", d_model=1024, activation="gelu", dtype="bfloat16")
    assert acc.layer_roofline(peer, 4096, peak_flops=1e15, bandwidth=3e12).bound == "memory"  # PEER is memory-bound
    big = LayerSpec(d_model=4096, d_ff=14336, n_experts=8, top_k=2, dtype="bfloat16")  # Mixtral layer, many tokens
    lr = acc.layer_roofline(big, 16384, peak_flops=1e15, bandwidth=3e12)
    assert lr.bound == "compute" and math.isclose(lr.time_s, lr.flops / 1e15)


def test_activation_bytes_upper_bound_by_hand_and_above_a_measured_peak():
    import torch

    from moebench.accounting import layer_activation_bytes
    from moebench.layers import build_layer
    from moebench.measure.memory import peak_memory

    spec = LayerSpec(d_model=64, d_ff=128, n_experts=4, top_k=2, backend="loop")
    parts = layer_activation_bytes(spec, 256)
    A = 256 * 2
    assert parts == {"router": 2 * 256 * 4 * 4 + A * (4 + 8), "dispatch": 2 * A * 64 * 4,
                     "experts": A * (256 + 128) * 4, "combine": A * 64 * 4 + 256 * 64 * 4}
    layer = build_layer(spec).eval()
    x = torch.randn(256, 64)

    def step():
        with torch.inference_mode():
            layer(x)

    step()
    measured = peak_memory(step, "cpu").peak_bytes
    assert 0 < measured <= sum(parts.values())
