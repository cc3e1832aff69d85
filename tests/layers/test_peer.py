"""PEER layer against a naive per-token, per-head reference that scores all N experts one by one."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from moebench import LayerSpec, build_layer
from moebench.layers.peer import PEER


def peer_spec(**kw) -> LayerSpec:
    base = dict(variant="peer", d_model=24, peer_experts=16**2, peer_heads=2, peer_k=4, d_key=12,
                activation="gelu", peer_query_batchnorm=False)
    return LayerSpec(**{**base, **kw})


def naive_queries(layer: PEER, x_TD: torch.Tensor) -> torch.Tensor:
    """q_THPQ in float64: x W^T, then (eval) BatchNorm written out."""
    q_TC = x_TD.double() @ layer.query.weight.double().T
    bn = layer.query_bn
    if bn is not None:
        q_TC = (q_TC - bn.running_mean.double()) / torch.sqrt(bn.running_var.double() + bn.eps)
        q_TC = q_TC * bn.weight.double() + bn.bias.double()
    return q_TC.view(x_TD.shape[0], layer.spec.peer_heads, 2, -1)


def naive_peer(layer: PEER, x_TD: torch.Tensor, q_THPQ: torch.Tensor) -> torch.Tensor:
    """y_t = sum_h sum_{i in top-k of all N scores} g_i act(u_i . x_t) v_i, one token and head at a time."""
    spec = layer.spec
    R, K = spec.peer_n_keys, spec.peer_k
    keys = layer.keys_GPRQ.double()
    u, v, x = layer.u_ND.double(), layer.v_ND.double(), x_TD.double()
    act = F.gelu if spec.activation == "gelu" else F.relu
    y = torch.zeros(x.shape, dtype=torch.float64)
    for t in range(x.shape[0]):
        for h in range(spec.peer_heads):
            key = keys[h if keys.shape[0] > 1 else 0]
            s1 = (key[0] @ q_THPQ[t, h, 0].double()).tolist()  # score of every first-half sub-key
            s2 = (key[1] @ q_THPQ[t, h, 1].double()).tolist()
            scores = [s1[i // R] + s2[i % R] for i in range(R * R)]  # expert i = (a, b) = divmod(i, R)
            top = sorted(range(R * R), key=lambda i: -scores[i])[:K]
            s = torch.tensor([scores[i] for i in top], dtype=torch.float64)
            g = torch.softmax(s, 0) if spec.peer_score == "softmax" else torch.relu(s)
            for gi, i in zip(g, top, strict=True):
                y[t] += gi * act(u[i] @ x[t]) * v[i]
    return y


@pytest.mark.parametrize("score", ["softmax", "relu"])
@pytest.mark.parametrize("activation", ["gelu", "relu"])
@pytest.mark.parametrize("shared_keys", [True, False])
def test_matches_naive_reference_fp32(score, activation, shared_keys):
    torch.manual_seed(0)
    layer = PEER(peer_spec(peer_score=score, activation=activation), shared_keys=shared_keys)
    x = torch.randn(2, 3, 24)
    x_TD = x.reshape(-1, 24)
    ref = naive_peer(layer, x_TD, naive_queries(layer, x_TD)).float().reshape(x.shape)
    torch.testing.assert_close(layer(x), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


def test_matches_naive_reference_bf16():
    # bf16 rounding of the query can flip near-tied experts, so the reference starts from the
    # layer's own (plain nn.Linear) queries; retrieval, gates and expert math stay independent.
    torch.manual_seed(1)
    layer = PEER(peer_spec(dtype="bfloat16", peer_k=3, peer_heads=3))
    x_TD = torch.randn(5, 24, dtype=torch.bfloat16)
    y = layer(x_TD)
    assert y.dtype == torch.bfloat16
    ref = naive_peer(layer, x_TD, layer.queries(x_TD)).float()
    torch.testing.assert_close(y.float(), ref, rtol=3e-2, atol=2e-2 * ref.abs().max().item())


@settings(max_examples=15, deadline=None)
@given(R=st.integers(2, 9), K=st.integers(1, 9), H=st.integers(1, 3), Q=st.integers(1, 4),
       T=st.integers(1, 6), shared=st.booleans(), seed=st.integers(0, 10**6))
def test_product_retrieval_equals_brute(R, K, H, Q, T, shared, seed):
    K = min(K, R)
    torch.manual_seed(seed)
    product = PEER(peer_spec(peer_experts=R * R, peer_k=K, peer_heads=H, d_key=2 * Q), shared_keys=shared)
    brute = PEER(product.spec.replace(peer_retrieval="brute"), shared_keys=shared)
    brute.load_state_dict(product.state_dict())
    x_TD = torch.randn(T, 24)
    s_THPR = product.subkey_scores(product.queries(x_TD))
    score_p, idx_p = product.retrieve(s_THPR)
    score_b, idx_b = brute.retrieve(s_THPR)
    assert torch.equal(score_p, score_b)  # same float sums, sorted descending by topk
    assert torch.equal(idx_p.sort(-1).values, idx_b.sort(-1).values)  # random scores: no ties
    torch.testing.assert_close(product(x_TD), brute(x_TD), rtol=1e-6, atol=1e-6)


def test_retrieved_are_the_top_k_of_all_n_and_gates_are_softmax_over_them():
    torch.manual_seed(2)
    layer = PEER(peer_spec(peer_k=5, peer_heads=3))
    q = layer.queries(torch.randn(7, 24))
    s_THPR = layer.subkey_scores(q)
    score_THK, idx_THK = layer.retrieve(s_THPR)
    all_THN = (s_THPR[:, :, 0, :, None] + s_THPR[:, :, 1, None, :]).flatten(-2)
    torch.testing.assert_close(score_THK, all_THN.topk(5, -1).values)
    torch.testing.assert_close(all_THN.gather(-1, idx_THK), score_THK)
    gate = layer.gates(score_THK)
    torch.testing.assert_close(gate.sum(-1), torch.ones(7, 3))
    torch.testing.assert_close(gate, torch.exp(score_THK) / torch.exp(score_THK).sum(-1, keepdim=True))
    relu = PEER(layer.spec.replace(peer_score="relu"))
    assert torch.equal(relu.gates(score_THK), score_THK.clamp(min=0))


def test_query_batchnorm_train_uses_batch_stats_eval_uses_running_stats():
    torch.manual_seed(3)
    layer = PEER(peer_spec(peer_query_batchnorm=True))
    x_TD = torch.randn(64, 24) * 3 + 1
    q_train = layer.queries(x_TD).reshape(64, -1)  # BN weight 1, bias 0: standardised per feature
    torch.testing.assert_close(q_train.mean(0), torch.zeros(24), atol=1e-5, rtol=0)
    torch.testing.assert_close(q_train.var(0, unbiased=False), torch.ones(24), atol=1e-3, rtol=0)
    raw = x_TD @ layer.query.weight.T
    torch.testing.assert_close(layer.query_bn.running_mean, 0.1 * raw.mean(0))  # momentum 0.1 from 0
    y_train = layer(x_TD)
    layer.eval()
    q_eval = layer.queries(x_TD)
    torch.testing.assert_close(q_eval, naive_queries(layer, x_TD).float())
    assert not torch.allclose(q_eval.reshape(64, -1), q_train)
    assert not torch.allclose(layer(x_TD), y_train)
    ref = naive_peer(layer, x_TD, naive_queries(layer, x_TD)).float()
    torch.testing.assert_close(layer(x_TD), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


@pytest.mark.parametrize("score", ["softmax", "relu"])
def test_gradients_reach_queries_keys_and_only_the_retrieved_experts(score):
    torch.manual_seed(4)
    layer = PEER(peer_spec(peer_score=score, peer_query_batchnorm=True, peer_k=2))
    x_TD = torch.randn(6, 24, requires_grad=True)
    layer(x_TD).square().sum().backward()
    for name in ("query.weight", "query_bn.weight", "keys_GPRQ", "u_ND", "v_ND"):
        grad = dict(layer.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert x_TD.grad.abs().sum() > 0
    with torch.no_grad():
        _, idx_THK = layer.retrieve(layer.subkey_scores(layer.queries(x_TD)))
    hit_N = torch.zeros(layer.spec.peer_experts, dtype=torch.bool)
    hit_N[idx_THK.reshape(-1)] = True
    assert (layer.v_ND.grad[~hit_N] == 0).all() and (layer.v_ND.grad[hit_N].abs().sum(-1) > 0).all()


class LargestOutput(TorchDispatchMode):
    """Records the largest tensor any op produces."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for o in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(o, torch.Tensor):
                self.numel = max(self.numel, o.numel())
        return out


@torch.no_grad()
def test_product_mode_never_materialises_tokens_by_experts():
    torch.manual_seed(5)
    T, N = 32, 64**2
    sizes = {}
    for retrieval in ("product", "brute"):
        layer = PEER(peer_spec(peer_experts=N, d_model=8, peer_heads=2, peer_k=4, peer_retrieval=retrieval))
        x_TD = torch.randn(T, 8)
        with LargestOutput() as mode:
            layer(x_TD)
        sizes[retrieval] = mode.numel
    assert sizes["brute"] >= T * 2 * N  # the probe sees [T, H, N] when it exists
    assert sizes["product"] < T * N / 8


def test_last_stats_counts_every_retrieved_expert():
    torch.manual_seed(6)
    layer = build_layer(peer_spec(peer_heads=3, peer_k=4))
    assert isinstance(layer, PEER)
    x_TD = torch.randn(10, 24)
    layer(x_TD)
    _, idx_THK = layer.retrieve(layer.subkey_scores(layer.queries(x_TD)))
    stats = layer.last_stats
    assert torch.equal(stats.load_E, torch.bincount(idx_THK.reshape(-1), minlength=256))
    assert stats.load_E.sum() == 10 * 3 * 4 and stats.summary()["drop_rate"] == 0
    layer.collect_stats = False
    layer(x_TD)
    assert layer.last_stats is None


def test_shapes_and_dtypes():
    layer = build_layer(peer_spec(dtype="bfloat16"))
    assert all(p.dtype == torch.bfloat16 for p in layer.parameters())
    assert layer.keys_GPRQ.shape == (1, 2, 16, 6) and layer.u_ND.shape == (256, 24)
    y = layer(torch.randn(2, 3, 4, 24, dtype=torch.bfloat16))
    assert y.shape == (2, 3, 4, 24) and y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    assert math.isclose(PEER(peer_spec(), shared_keys=False).keys_GPRQ.shape[0], 2)


def test_spec_validation():
    with pytest.raises(ValueError, match="peer_experts.*perfect square"):
        peer_spec(peer_experts=200)
    with pytest.raises(ValueError, match="d_key.*even"):
        peer_spec(d_key=7)
    with pytest.raises(ValueError, match="peer_k.*n_keys"):
        peer_spec(peer_k=17)
    peer_spec(peer_k=17, peer_retrieval="brute")  # brute force can retrieve more than n_keys
    with pytest.raises(ValueError, match="activation='swiglu'.*gelu, relu"):
        build_layer(peer_spec(activation="swiglu"))


# --- the gather + expert step: chunks, compile, memory ------------------------------------------

def gathered_experts(layer: PEER, x_TD, gate_THK, idx_THK) -> torch.Tensor:
    """The step written with every gathered row materialised ([T, H, K, D]): the plain reference."""
    u_THKD, v_THKD = layer.u_ND[idx_THK], layer.v_ND[idx_THK]
    a_THK = F.gelu(torch.einsum("td,thkd->thk", x_TD, u_THKD)) * gate_THK
    return torch.einsum("thk,thkd->td", a_THK, v_THKD)


def experts_and_grads(layer: PEER, x_TD, gate_THK, idx_THK, fn) -> list[torch.Tensor]:
    y_TD = fn(layer, x_TD, gate_THK, idx_THK)
    dy_TD = torch.randn(y_TD.shape, generator=torch.Generator().manual_seed(0))
    return [y_TD, *torch.autograd.grad(y_TD, [x_TD, gate_THK, layer.u_ND, layer.v_ND], dy_TD)]


def peer_step_case(T=7, seed=7):
    torch.manual_seed(seed)
    layer = PEER(peer_spec(peer_heads=3, peer_k=4))
    x_TD = torch.randn(T, 24, requires_grad=True)
    with torch.no_grad():
        score_THK, idx_THK = layer.retrieve(layer.subkey_scores(layer.queries(x_TD)))
    idx_THK[0, 1] = idx_THK[0, 0]  # a repeated expert: du and dv must accumulate both uses
    return layer, x_TD, layer.gates(score_THK).requires_grad_(True), idx_THK


@pytest.mark.parametrize("chunk_tokens", [1, 3, None])
def test_chunked_experts_match_the_gathered_reference_forward_and_gradients(chunk_tokens):
    layer, x_TD, gate_THK, idx_THK = peer_step_case()
    want = experts_and_grads(layer, x_TD, gate_THK, idx_THK, gathered_experts)
    layer.chunk_tokens = chunk_tokens
    got = experts_and_grads(layer, x_TD, gate_THK, idx_THK, PEER.experts)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_compiled_experts_match_the_gathered_reference():
    pytest.importorskip("torch._inductor")
    layer, x_TD, gate_THK, idx_THK = peer_step_case()
    want = experts_and_grads(layer, x_TD, gate_THK, idx_THK, gathered_experts)
    layer.experts_impl = "compile"
    for g, w in zip(experts_and_grads(layer, x_TD, gate_THK, idx_THK, PEER.experts), want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    layer.experts_impl = "einsum"
    with pytest.raises(ValueError, match="impl='einsum' is invalid.*torch, compile, triton"):
        layer(x_TD)


def test_experts_memory_is_one_chunk_not_tokens_by_retrievals_by_d():
    torch.manual_seed(8)
    T, H, K, D, C = 64, 4, 8, 8, 2
    layer = PEER(peer_spec(d_model=D, peer_heads=H, peer_k=K))
    layer.chunk_tokens = C
    x_TD = torch.randn(T, D, requires_grad=True)
    with torch.no_grad():
        score_THK, idx_THK = layer.retrieve(layer.subkey_scores(layer.queries(x_TD)))
    gate_THK = layer.gates(score_THK)
    with LargestOutput() as mode:
        layer.experts(x_TD, gate_THK, idx_THK).sum().backward()
    # the gathered [T, H*K, D] would be 16384 elements; the dense du/dv [N, D] are 2048, [T, H*K] 2048
    assert mode.numel <= max(C * H * K * D, layer.spec.peer_experts * D, T * H * K) < T * H * K * D


@pytest.mark.parametrize("K", [1, 2, 5, 16])
def test_candidate_pairs_are_the_rank_pairs_that_can_reach_the_top_k(K):
    from moebench.layers.peer import candidate_pairs

    i_C, j_C = candidate_pairs(K, torch.device("cpu"))
    assert ((i_C + 1) * (j_C + 1) <= K).all() and (i_C < K).all() and (j_C < K).all()
    assert len(i_C) == sum(K // i for i in range(1, K + 1))  # 50 for K = 16
    # on random sorted halves, the top K of the listed sums is the top K of all K*K sums
    gen = torch.Generator().manual_seed(K)
    top1, top2 = (torch.rand(200, K, generator=gen).sort(-1, descending=True).values for _ in range(2))
    full = (top1[:, :, None] + top2[:, None, :]).flatten(1).topk(K, -1).values
    assert torch.equal((top1[:, i_C] + top2[:, j_C]).topk(K, -1).values, full)


def test_training_after_an_inference_mode_forward_with_the_same_k():
    """Cached retrieval tensors made under inference_mode must not break a later backward."""
    from moebench.layers.peer import candidate_pairs

    candidate_pairs.cache_clear()
    spec = LayerSpec(variant="peer", d_model=16, peer_experts=16**2, peer_heads=2, peer_k=5, d_key=8)
    layer = build_layer(spec)
    x = torch.randn(6, 16)
    with torch.inference_mode():
        layer.eval()(x)
    layer.train()(x).square().mean().backward()
    assert layer.u_ND.grad is not None


# --- native top-k, blocked scores, the no-autograd score GEMMs -----------------------------------

# skipped only without a compiler: where one exists and the build fails, these fail and say why
needs_native = pytest.mark.skipif(not __import__("moebench.kernels.native_build").kernels.native_build
                                  .compiler_present(), reason="no C compiler on PATH (or CC)")


@pytest.mark.parametrize("shared_keys", [True, False])
def test_no_autograd_scores_equal_the_batched_matmul(shared_keys):
    torch.manual_seed(9)
    layer = PEER(peer_spec(peer_heads=3), shared_keys=shared_keys)
    q = layer.queries(torch.randn(11, 24))
    want = layer.subkey_scores(q)  # autograd: the batched matmul
    assert want.requires_grad
    with torch.no_grad():
        got = layer.subkey_scores(q)  # one mm per (head, half)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert got.permute(1, 2, 0, 3).is_contiguous()
    with torch.no_grad():  # an in-place update (as an optimizer step) must not leave stale cached keys behind
        layer.keys_GPRQ.mul_(-2)
        torch.testing.assert_close(layer.subkey_scores(q), -2 * want, rtol=1e-6, atol=1e-6)
        layer.keys_GPRQ.data = layer.keys_GPRQ.data.clone().mul_(-0.5)  # new storage, version reset
        torch.testing.assert_close(layer.subkey_scores(q), want, rtol=1e-6, atol=1e-6)


@needs_native
@settings(max_examples=15, deadline=None)
@given(R=st.integers(2, 40), K=st.integers(1, 9), H=st.integers(1, 3), T=st.integers(1, 6),
       shared=st.booleans(), seed=st.integers(0, 10**6))
def test_native_topk_retrieves_what_torch_topk_does(R, K, H, T, shared, seed):
    K = min(K, R)
    torch.manual_seed(seed)
    layer = PEER(peer_spec(peer_experts=R * R, peer_k=K, peer_heads=H), shared_keys=shared)
    s_THPR = layer.subkey_scores(layer.queries(torch.randn(T, 24)))
    want_score, want_idx = layer.retrieve(s_THPR)
    layer.topk_impl = "native"
    score, idx = layer.retrieve(s_THPR)
    assert torch.equal(score, want_score) and score.requires_grad  # re-gathered: autograd reaches the keys
    assert torch.equal(idx.sort(-1).values, want_idx.sort(-1).values)


@needs_native
@pytest.mark.parametrize("block_bytes", [1, 3 * 2 * 2 * 16**2 * 4, 2**30])  # 1 token, 3 tokens (7 = 3+3+1), all
def test_native_blocked_forward_matches_torch_and_the_naive_reference(block_bytes, monkeypatch):
    import moebench.layers.peer as peer_module

    monkeypatch.setattr(peer_module, "SCORE_BLOCK_BYTES", block_bytes)
    torch.manual_seed(10)
    layer = PEER(peer_spec(peer_experts=32**2, peer_k=5), shared_keys=False).eval()
    x_TD = torch.randn(7, 24)
    with torch.no_grad():
        want = layer(x_TD)
        layer.topk_impl = "native"
        got = layer(x_TD)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)  # one-token blocks: mm's GEMV sums in another order
    ref = naive_peer(layer, x_TD, naive_queries(layer, x_TD)).float()
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


@needs_native
@torch.no_grad()
def test_native_blocked_retrieval_never_holds_all_scores(monkeypatch):
    import moebench.layers.peer as peer_module

    T, H, R, block = 64, 2, 64, 8
    monkeypatch.setattr(peer_module, "SCORE_BLOCK_BYTES", block * H * 2 * R * 4)
    torch.manual_seed(11)
    layer = PEER(peer_spec(peer_experts=R * R, d_model=8, peer_heads=H, peer_k=4))
    sizes = {}
    for impl in ("torch", "native"):
        layer.topk_impl = impl
        with LargestOutput() as mode:
            layer(torch.randn(T, 8))
        sizes[impl] = mode.numel
    assert sizes["torch"] >= T * H * 2 * R > sizes["native"]


@needs_native
@pytest.mark.parametrize("score", ["softmax", "relu"])
def test_native_topk_trains_with_the_same_gradients(score):
    torch.manual_seed(12)
    grads = {}
    for impl in ("torch", "native"):
        torch.manual_seed(12)
        layer = PEER(peer_spec(peer_score=score, peer_query_batchnorm=True, peer_k=3))
        layer.topk_impl = impl
        x_TD = torch.randn(6, 24, requires_grad=True)
        layer(x_TD).square().sum().backward()
        grads[impl] = [x_TD.grad, *(p.grad for p in layer.parameters())]
    for got, want in zip(grads["native"], grads["torch"], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_unknown_topk_impl_is_refused():
    layer = PEER(peer_spec())
    layer.topk_impl = "heap"
    with pytest.raises(ValueError, match="topk_impl='heap' is invalid.*torch, native"):
        layer(torch.randn(3, 24))


@needs_native
def test_native_experts_match_the_gathered_reference_forward_and_gradients():
    layer, x_TD, gate_THK, idx_THK = peer_step_case()
    want = experts_and_grads(layer, x_TD, gate_THK, idx_THK, gathered_experts)
    layer.experts_impl = "native"  # the C gather-dot forward, the eager backward
    for g, w in zip(experts_and_grads(layer, x_TD, gate_THK, idx_THK, PEER.experts), want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)



def test_auto_impls_pick_the_native_kernels_on_cpu_float32_only(monkeypatch):
    """The default ("auto") runs the C top-k and gather-dot where they run, torch elsewhere, with the
    same output either way."""
    from moebench.kernels import peer_native

    spec = LayerSpec(variant="peer", d_model=32, peer_experts=256, peer_heads=2, peer_k=4, d_key=16,
                     activation="gelu")
    torch.manual_seed(0)
    layer = build_layer(spec).eval()
    peer = layer.peer if hasattr(layer, "peer") else layer
    assert (peer.topk_impl, peer.experts_impl) == ("auto", "auto")
    x = torch.randn(12, 32)
    scores, bf16_x = torch.zeros(1), x.bfloat16()
    want = "native" if peer_native.available() else "torch"
    assert peer._resolved_topk_impl(scores) == peer._resolved_experts_impl(x) == want
    assert peer._resolved_topk_impl(scores.double()) == "torch"
    with torch.no_grad():
        auto = layer(x)
        peer.topk_impl = peer.experts_impl = "torch"
        torch.testing.assert_close(layer(x), auto, rtol=1e-5, atol=1e-6)
        peer.topk_impl = peer.experts_impl = "auto"
        monkeypatch.setattr(peer_native, "available", lambda: False)  # no C compiler: torch, same output
        assert peer._resolved_experts_impl(bf16_x) == "torch"
        torch.testing.assert_close(layer(x), auto, rtol=1e-5, atol=1e-6)
