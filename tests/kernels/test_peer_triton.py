"""PEER's fused Triton gather + expert kernel against the torch path and the naive PEER reference.
Axis legend: T tokens, D model dim, N experts, A = H*K retrieved experts per token."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from moebench.kernels.peer_experts import peer_experts  # noqa: E402
from moebench.kernels.peer_triton import peer_experts_triton  # noqa: E402
from moebench.layers.peer import PEER  # noqa: E402
from moebench.spec import LayerSpec  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def operands(T: int, A: int, D: int, N: int, dtype: torch.dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x, u, v = (torch.randn(n, D, generator=gen).to(dtype) for n in (T, N, N))
    idx = torch.randint(N, (T, A), generator=gen)
    gate = torch.rand(T, A, generator=gen)
    return [t.to(DEVICE).requires_grad_(t.is_floating_point()) for t in (x, u, v, idx, gate)]


@pytest.mark.parametrize("activation", ["gelu", "relu"])
@pytest.mark.parametrize("T, A, D", [(5, 12, 24), (1, 16, 8), (3, 33, 40), (0, 4, 8)])
def test_matches_torch_path_forward_and_gradients(activation, T, A, D):
    x, u, v, idx, gate = operands(T, A, D, 50, torch.float32)
    y = peer_experts_triton(x, u, v, idx, gate, activation)
    want = peer_experts(x, u, v, idx, gate, activation, impl="torch")
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5 * (want.abs().max().item() if T else 1))
    if T:
        dy = torch.randn_like(y)
        got = torch.autograd.grad(y, [x, u, v, gate], dy)
        ref = torch.autograd.grad(want, [x, u, v, gate], dy)
        for g, r in zip(got, ref, strict=True):
            torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


def test_bf16_accumulates_in_float32():
    x, u, v, idx, gate = operands(4, 16, 32, 40, torch.bfloat16, seed=1)
    y = peer_experts_triton(x, u, v, idx, gate, "gelu")
    exact = peer_experts(x.double(), u.double(), v.double(), idx, gate.double(), "gelu")
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.double(), exact, rtol=1e-2, atol=1e-2 * exact.abs().max().item())


def test_peer_layer_with_triton_experts_matches_torch_experts():
    torch.manual_seed(2)
    spec = LayerSpec(variant="peer", d_model=24, peer_experts=16**2, peer_heads=2, peer_k=4, d_key=12,
                     peer_query_batchnorm=False)
    layer = PEER(spec).to(DEVICE)
    x = torch.randn(6, 24, device=DEVICE, requires_grad=True)
    want = layer(x)
    (g_want,) = torch.autograd.grad(want.square().sum(), x)
    layer.experts_impl = "triton"
    got = layer(x)
    (g_got,) = torch.autograd.grad(got.square().sum(), x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_got, g_want, rtol=1e-5, atol=1e-6)


def test_unknown_activation_is_refused():
    x, u, v, idx, gate = operands(2, 4, 8, 10, torch.float32)
    with pytest.raises(ValueError, match="activation='swiglu'.*gelu, relu"):
        peer_experts_triton(x, u, v, idx, gate, "swiglu")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the compiled kernel")
def test_cuda_paper_shape_block():
    x, u, v, idx, gate = operands(64, 128, 512, 4096, torch.bfloat16, seed=3)
    want = peer_experts(x.double(), u.double(), v.double(), idx, gate.double(), "gelu")
    got = peer_experts_triton(x, u, v, idx, gate, "gelu").double()
    torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2 * want.abs().max().item())
