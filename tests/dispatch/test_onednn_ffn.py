"""The fused, packed CPU expert FFN (moebench.dispatch.onednn_ffn) against the plain FFN, and its use by
sort_gather: taken when nothing needs a gradient, refused otherwise, repacked when weights change."""

from __future__ import annotations

import pytest
import torch
from dispatch_compare import assert_close_scaled

from moebench.dispatch import onednn_ffn
from moebench.dispatch.common import ffn
from moebench.dispatch.loop import run_loop
from moebench.dispatch.sort_gather import run_sort_gather
from moebench.kernels import dispatch_native, native_build
from moebench.routing.assignment import Routing

ACTIVATIONS = ("swiglu", "gelu", "relu")
BF16 = torch.bfloat16
needs_mkldnn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
# swiglu as one GEMM + the C pass (needs a C compiler), or as two post-op GEMMs (the fallback)
SPLITS = [pytest.param(False, marks=pytest.mark.skipif(not native_build.compiler_present(), reason="no C compiler")),
          True]


def expert_weights(E: int, D: int, Fh: int, activation: str, dtype=BF16, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    w_in_EID = (torch.randn(E, 2 * Fh if activation == "swiglu" else Fh, D, generator=gen) / D**0.5).to(dtype)
    w_out_EDF = (torch.randn(E, D, Fh, generator=gen) / Fh**0.5).to(dtype)
    return w_in_EID, w_out_EDF


def random_routing(T: int, E: int, K: int, seed: int = 0) -> Routing:
    gen = torch.Generator().manual_seed(seed)
    expert_A = torch.stack([torch.randperm(E, generator=gen)[:K] for _ in range(T)]).reshape(-1)
    return Routing(torch.arange(T).repeat_interleave(K), expert_A, torch.rand(T * K, generator=gen),
                   torch.ones(T * K, dtype=torch.bool), n_tokens=T, n_experts=E)


@pytest.fixture(autouse=True)
def fuse_any_width(monkeypatch):
    """The tests use tiny experts; the width threshold has its own test."""
    monkeypatch.setattr(onednn_ffn, "MIN_F_OVER_D", 0.0)


@needs_mkldnn
@pytest.mark.parametrize("activation, native", [("swiglu", False), ("gelu", False), ("relu", True),
                                                ("swiglu", True)])
def test_only_experts_wide_enough_take_post_ops(activation, native, monkeypatch):
    """The width limit holds for post-op fusion; swiglu with the C pass runs fused at any width."""
    if native and not native_build.compiler_present():
        pytest.skip("no C compiler")
    monkeypatch.setattr(onednn_ffn, "MIN_F_OVER_D", 2.0)
    monkeypatch.setattr(dispatch_native, "available", lambda: native)
    x = torch.randn(4, 16).to(BF16)
    for Fh, wide in ((31, False), (32, True), (48, True)):
        w_in, w_out = expert_weights(2, 16, Fh, activation)
        want = wide or (native and activation == "swiglu")
        assert onednn_ffn.available(x, w_in, w_out, activation) is want, Fh


@needs_mkldnn
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_available_for_bf16_on_cpu_only_without_autograd(activation):
    w_in, w_out = expert_weights(2, 16, 24, activation)
    x = torch.randn(4, 16).to(BF16)
    assert onednn_ffn.available(x, w_in, w_out, activation)
    assert not onednn_ffn.available(x.float(), w_in.float(), w_out.float(), activation)  # fp32 stays on MKL
    assert not onednn_ffn.available(x, w_in, w_out.float(), activation)  # mixed dtypes
    assert not onednn_ffn.available(x, w_in, w_out, "tanh")
    assert not onednn_ffn.available(x, w_in.requires_grad_(), w_out, activation)
    with torch.no_grad():
        assert onednn_ffn.available(x, w_in, w_out, activation)


@needs_mkldnn
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("n", [1, 7, 300, 600])
@pytest.mark.parametrize("pack", [False, True])
@pytest.mark.parametrize("split", SPLITS)
def test_fused_ffn_equals_plain_ffn(activation, n, pack, split):
    """Every expert of a stack, packed or not, swiglu either way, with and without a row scale."""
    D, Fh = 32, 48
    w_in, w_out = expert_weights(3, D, Fh, activation, seed=n)
    x = torch.randn(n, D).to(BF16)
    scale_n1 = torch.rand(n, 1)
    weights = onednn_ffn._make_weights(w_in, w_out, activation, pack, split)
    assert (weights[0].w_b is not None) == (split and activation == "swiglu")
    with torch.no_grad():
        for e in range(3):
            want = ffn(x.float(), w_in[e].float(), w_out[e].float(), activation)
            assert_close_scaled(onednn_ffn.fused_ffn(x, weights[e]), want, BF16, f"{activation} expert {e}")
            got = onednn_ffn.fused_ffn(x, weights[e], scale_n1)
            assert_close_scaled(got, want * scale_n1, BF16, f"{activation} expert {e}, scaled")


@needs_mkldnn
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
@pytest.mark.parametrize("native", [pytest.param(True, marks=SPLITS[0].marks), False])
def test_sort_gather_takes_the_fused_path_without_autograd(activation, context, native, monkeypatch):
    """bf16 without autograd runs every expert through fused_ffn and matches the loop reference, with
    the C kernels (swiglu pass, one combine) or without them (post-op swiglu, torch's combine, where
    F > D and F < D cover both places the combine weight is applied)."""
    if not native:
        monkeypatch.setattr(dispatch_native, "available", lambda: False)
    calls = []
    real = onednn_ffn.fused_ffn
    monkeypatch.setattr(onednn_ffn, "fused_ffn", lambda *a, **k: calls.append(1) or real(*a, **k))
    for Fh in (8, 40):
        w_in, w_out = expert_weights(5, 16, Fh, activation, seed=Fh)
        x = torch.randn(23, 16).to(BF16)
        routing = random_routing(23, 5, 2, seed=Fh)
        with context():
            got = run_sort_gather(x, routing, w_in, w_out, activation)
            want = run_loop(x.float(), routing, w_in.float(), w_out.float(), activation)
        assert_close_scaled(got, want, BF16, f"{activation} F={Fh}")
    assert len(calls) >= 2 * 4, "the fused path was not taken"


@needs_mkldnn
def test_sort_gather_with_autograd_does_not_take_the_fused_path(monkeypatch):
    monkeypatch.setattr(onednn_ffn, "fused_ffn", lambda *a, **k: pytest.fail("fused path taken under autograd"))
    w_in, w_out = expert_weights(4, 16, 24, "swiglu")
    w_in.requires_grad_()
    x = torch.randn(9, 16).to(BF16)
    y = run_sort_gather(x, random_routing(9, 4, 2), w_in, w_out, "swiglu")
    y.float().sum().backward()
    assert w_in.grad is not None


@needs_mkldnn
def test_packed_weights_are_cached_and_rebuilt_when_the_weights_change():
    w_in, w_out = expert_weights(3, 16, 24, "swiglu")
    first = onednn_ffn.expert_weights(w_in, w_out, "swiglu")
    assert onednn_ffn.expert_weights(w_in, w_out, "swiglu") is first  # cached
    x = torch.randn(6, 16).to(BF16)
    routing = random_routing(6, 3, 2)
    with torch.no_grad():
        before = run_sort_gather(x, routing, w_in, w_out, "swiglu")
        w_out.mul_(2)  # an optimizer-style write: bumps the version counter
        after = run_sort_gather(x, routing, w_in, w_out, "swiglu")
    assert onednn_ffn.expert_weights(w_in, w_out, "swiglu") is not first
    assert_close_scaled(after, 2 * before, BF16, "after the weight changed")
    w_in.data.zero_()  # bypasses the version counter: documented, needs clear_packed_weights()
    onednn_ffn.clear_packed_weights()
    with torch.no_grad():
        assert run_sort_gather(x, routing, w_in, w_out, "swiglu").abs().max() == 0


@needs_mkldnn
def test_weights_over_the_pack_limit_run_fused_unpacked(monkeypatch):
    monkeypatch.setattr(onednn_ffn, "PACK_LIMIT", 1)
    w_in, w_out = expert_weights(2, 16, 24, "gelu")
    weights = onednn_ffn.expert_weights(w_in, w_out, "gelu")
    assert weights[0].w_a.data_ptr() == w_in[0].data_ptr()  # a view, not a packed copy
    x = torch.randn(5, 16).to(BF16)
    with torch.no_grad():
        assert_close_scaled(onednn_ffn.fused_ffn(x, weights[1]), ffn(x.float(), w_in[1].float(), w_out[1].float(),
                                                                    "gelu"), BF16, "unpacked")


def test_without_the_fused_ops_sort_gather_falls_back(monkeypatch):
    """A torch without the private oneDNN ops (or where the probe disagrees) runs the plain path."""
    monkeypatch.setattr(onednn_ffn, "_linear", lambda: None)
    onednn_ffn._probe.cache_clear()
    try:
        w_in, w_out = expert_weights(3, 16, 24, "swiglu")
        x = torch.randn(7, 16).to(BF16)
        assert not onednn_ffn.available(x, w_in, w_out, "swiglu")
        routing = random_routing(7, 3, 2)
        with torch.no_grad():
            got = run_sort_gather(x, routing, w_in, w_out, "swiglu")
        assert_close_scaled(got, run_loop(x.float(), routing, w_in.float(), w_out.float(), "swiglu"), BF16, "fallback")
    finally:
        onednn_ffn._probe.cache_clear()
