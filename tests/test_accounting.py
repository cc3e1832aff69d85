"""moebench.accounting against built layers (parameter counts, torch's FLOP counter), hand-derived
values and the published numbers of docs/formulas.md."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from moebench import accounting as acc
from moebench.bench import run_case
from moebench.kernels.peer_experts import chunk_tokens_for
from moebench.layers import VARIANTS, build_layer
from moebench.routing.capacity import expected_drop_fraction_uniform, expert_capacity
from moebench.spec import VARIANTS as SPEC_VARIANTS
from moebench.spec import LayerSpec
from moebench.suite import Case, MeasurePlan, load_suite

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


def test_activation_bound_counts_the_padded_backends_capacity_slots_by_hand():
    # T=64, D=8, F=16 swiglu (I=32), E=4, K=2, CF=1.5: A = 128 assignments, C = ceil(1.5*64*2/4) = 48
    # slots per expert, so the experts compute R = E*C = 192 rows (64 of them empty), not A.
    spec = LayerSpec(d_model=8, d_ff=16, n_experts=4, top_k=2, backend="padded", capacity_factor=1.5)
    assert acc.computed_rows(spec, 64) == 192
    parts = acc.layer_activation_bytes(spec, 64)
    assert parts["experts"] == 192 * (32 + 2 * 16 + 8) * 4  # in-proj, silu(gate) and product, out-proj: 55296
    # gathered [192, 8], x + zero row [65, 8], slot->token map 2 x [193] int64, outputs + zero row [193, 8],
    # their gather back to assignments [128, 8]
    assert parts["dispatch"] == 192 * 32 + 65 * 32 + 2 * 193 * 8 + 193 * 32 + 128 * 32 == 21584
    assert parts["combine"] == 128 * 8 * 4 + 2 * 64 * 8 * 4 == 8192  # weighted rows, accumulator twice
    assert parts["router"] == 64 * 4 * (4 + 6 * 4 + 1) + 128 * (16 * 8 + 4 * 4 + 2) == 26112
    assert parts["shared"] == 0
    dropless = LayerSpec(d_model=8, d_ff=16, n_experts=4, top_k=2, backend="grouped_mm")
    assert acc.layer_activation_bytes(dropless, 64)["experts"] == 128 * (32 + 2 * 16 + 8) * 4


def test_activation_bound_counts_every_dense_ffn_temporary_by_hand():
    # swiglu over T=64 rows, D=8, F=16: h [64, 32], silu(gate) [64, 16] alive while it multiplies up
    # into act [64, 16], out [64, 8]; gelu: h [64, 16], act [64, 16], out [64, 8]
    swiglu = LayerSpec(variant="dense", d_model=8, d_ff=16)
    assert acc.layer_activation_bytes(swiglu, 64) == {"experts": 64 * (32 + 16 + 16 + 8) * 4}
    gelu = LayerSpec(variant="dense", d_model=8, d_ff=16, activation="gelu", dtype="bfloat16")
    assert acc.layer_activation_bytes(gelu, 64) == {"experts": 64 * (16 + 16 + 8) * 2}


def test_activation_bound_counts_brute_force_peer_scores_over_all_experts_by_hand():
    # T=4, D=8, H=2, k=2, N=16 (4 sub-keys per half), d_key=4, float32 with the query BatchNorm
    spec = LayerSpec(variant="peer", d_model=8, activation="gelu", peer_experts=16, peer_heads=2, peer_k=2,
                     d_key=4, peer_retrieval="brute")
    parts = acc.layer_activation_bytes(spec, 4)
    assert parts["query"] == 4 * 2 * 4 * 4 * 2  # projection and BatchNorm output [4, 8]
    assert parts["subkey_scores"] == 4 * 2 * 2 * 4 * 4  # [T, H, 2, n] float32
    # all N sums [4, 2, 16] float32, then the top-k scores, ids and the ids' gather [4, 2, 2]
    assert parts["candidate_topk"] == 4 * 2 * 16 * 4 + 4 * 2 * 2 * (4 + 8 + 8) == 832
    assert parts["gates"] == 4 * 2 * 2 * 4
    # A = 4: u.x [4, 4], the gathered u rows [4, 4, 8] (all 4 tokens fit one chunk), act and gated act
    # [4, 4] float32, the output [4, 8], embedding_bag's two int64 bag-id arrays [16]
    assert parts["experts"] == 16 * 4 + 4 * 4 * 8 * 4 + 2 * 16 * 4 + 4 * 8 * 4 + 2 * 16 * 8 == 1088
    product = acc.layer_activation_bytes(dataclasses.replace(spec, peer_retrieval="product"), 4)
    # product: the halves' top-k [4, 2, 2] twice, c = 3 candidate pairs [4, 2, 3], the final top-k
    assert product["candidate_topk"] == 2 * 16 * (4 + 8) + 24 * (3 * 4 + 4 * 8) + 16 * (4 + 8 + 8) == 1760
    assert [acc.peer_candidate_pairs(k) for k in (1, 2, 4, 16)] == [1, 3, 8, 50]


def _memory_suite_forward_cases() -> list[Case]:
    """suites/memory.yaml's forward cases at small sizes (D 512 -> 32, F / 16, PEER N 65536 -> 1024,
    T 2048 -> 128), with the measurement bench.py makes (peak_bytes) and a short timing plan."""
    plan = MeasurePlan(warmup=1, min_samples=1, max_samples=1, budget_s=0.01, phases=False, ceiling=False)
    cases = []
    for case in load_suite("memory").cases:
        if case.workload.mode != "forward":
            continue
        small = dict(d_model=32, d_ff=case.spec.d_ff // 16)
        if case.spec.variant == "peer":
            small.update(peer_experts=1024, d_key=16)
        spec = dataclasses.replace(case.spec, **small)
        cases.append(Case(case.case_id, case.params, spec, dataclasses.replace(case.workload, tokens=128), plan))
    return cases


MEMORY_CASES = _memory_suite_forward_cases()
PEER_BRUTE = dataclasses.replace(MEMORY_CASES[0], case_id="peer_brute", spec=LayerSpec(
    variant="peer", d_model=32, activation="gelu", peer_experts=1024, peer_heads=8, peer_k=16, d_key=16,
    peer_retrieval="brute"))


LIFELONG_EXPANDED = dataclasses.replace(MEMORY_CASES[0], case_id="lifelong_expanded",
                                        spec=LayerSpec(variant="lifelong", d_model=32, d_ff=64, n_experts=8, top_k=2,
                                                       backend="grouped_mm"),
                                        workload=dataclasses.replace(MEMORY_CASES[0].workload, expand=8))


@pytest.mark.parametrize("case", MEMORY_CASES + [PEER_BRUTE, LIFELONG_EXPANDED], ids=lambda c: c.case_id)
def test_measured_forward_peak_stays_under_the_activation_bound(case):
    """bench.run_case's own peak (torch.profiler on CPU) against the bound it records beside it, for every
    forward configuration of the memory suite (padded CF 1.25 and 2.0, dense equal_active and equal_total
    exceeded the bound that counted A rows and no swiglu temporary), brute-force PEER, and a lifelong layer
    after expand (it copies its weights in every forward)."""
    metrics = run_case(case, "cpu", threads=1)["metrics"]
    assert case.workload.mode == "forward"
    assert 0 < metrics["peak_bytes"] <= metrics["predicted_activation_bytes_upper"]


@pytest.mark.parametrize("retrieval", ["product", "brute"])
def test_measured_peer_peak_stays_under_the_bound_with_the_torch_kernels(retrieval):
    """PEER's torch top-k and chunked torch gather (the paths without the C kernels: GPUs, no compiler)
    hold more than the native ones: candidate sums, and two gather chunks [C, A, D] at once. Here A = 512
    experts per token of D = 1024 make C = 16 tokens per 32 MiB chunk, 4 chunks over 64 tokens."""
    from moebench.measure.memory import peak_memory

    spec = LayerSpec(variant="peer", d_model=1024, activation="gelu", peer_experts=1024, peer_heads=16,
                     peer_k=32, d_key=16, peer_retrieval=retrieval)
    assert chunk_tokens_for(512, 1024, 4) == 16
    layer = build_layer(spec).eval()
    layer.collect_stats, layer.experts_impl, layer.topk_impl = False, "torch", "torch"
    x = torch.randn(64, 1024)

    def step():
        with torch.inference_mode():
            layer(x)

    step()
    assert 0 < peak_memory(step, "cpu").peak_bytes <= sum(acc.layer_activation_bytes(spec, 64).values())


def test_decode_weight_bytes_by_hand():
    # Mixtral-like: D=1024, F=3584, swiglu (3 matrices), E=8; 2 experts touched in bf16 (2 bytes)
    spec = LayerSpec(d_model=1024, d_ff=3584, n_experts=8, top_k=2, dtype="bfloat16")
    got = acc.decode_weight_bytes(spec, experts_touched=2)
    assert got == {"router": 8 * 1024 * 2, "experts": 2 * 3 * 1024 * 3584 * 2, "shared": 0}
    ds = LayerSpec(variant="deepseek", d_model=64, d_ff=32, n_experts=16, top_k=4, n_shared=2)
    got = acc.decode_weight_bytes(ds, experts_touched=5, dtype="float32")
    assert got["shared"] == 2 * 3 * 64 * 32 * 4 and got["experts"] == 5 * 3 * 64 * 32 * 4


def test_weight_read_floor_takes_the_larger_time():
    floor = acc.weight_read_floor(flops=2e9, weight_bytes=1e9, gemm_rate=1e11, read_bandwidth=4e10)
    assert floor.time_s == pytest.approx(0.025) and floor.bound == "memory"  # 1e9/4e10 > 2e9/1e11
    floor = acc.weight_read_floor(flops=8e9, weight_bytes=1e9, gemm_rate=1e11, read_bandwidth=4e10)
    assert floor.time_s == pytest.approx(0.08) and floor.bound == "compute"
