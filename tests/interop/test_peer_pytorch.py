"""from_peer_pytorch: moebench's PEER loaded from PEER-pytorch weights computes the same function."""

from __future__ import annotations

import pytest
import torch
from torch import nn

PEER_pytorch = pytest.importorskip("PEER_pytorch")

from moebench.interop.peer_pytorch import from_peer_pytorch  # noqa: E402


def their_peer(**kw) -> nn.Module:
    base = dict(heads=4, num_experts=16**2, num_experts_per_head=4)
    return PEER_pytorch.PEER(32, **{**base, **kw})


def assert_same_function(theirs: nn.Module, ours: nn.Module, x: torch.Tensor) -> None:
    y_theirs, y_ours = theirs(x), ours(x)
    assert y_ours.shape == x.shape
    torch.testing.assert_close(y_ours, y_theirs, rtol=1e-5, atol=1e-5 * y_theirs.abs().max().item())


@pytest.mark.parametrize("non_competing", [True, False])
@pytest.mark.parametrize("pre_rmsnorm", [False, True])
@pytest.mark.parametrize("activation", [nn.GELU, nn.ReLU])
def test_outputs_match(non_competing, pre_rmsnorm, activation):
    torch.manual_seed(0)
    theirs = their_peer(non_competing_scores=non_competing, pre_rmsnorm=pre_rmsnorm, activation=activation)
    if pre_rmsnorm:
        nn.init.normal_(theirs.norm.gamma, std=0.5)  # away from its all-zero init, so the copy matters
    ours = from_peer_pytorch(theirs)
    spec = ours.peer.spec
    assert (spec.peer_k, spec.peer_score) == ((1, "relu") if non_competing else (4, "softmax"))
    assert spec.d_key == 2 * theirs.keys.shape[-1] and not spec.peer_query_batchnorm
    assert_same_function(theirs, ours, torch.randn(2, 5, 32))


def test_more_product_candidates_than_kept_and_other_key_dim():
    torch.manual_seed(1)
    theirs = their_peer(non_competing_scores=False, product_key_topk=9, dim_key=6, heads=3)
    assert_same_function(theirs, from_peer_pytorch(theirs), torch.randn(3, 4, 32))


def test_gradients_match():
    torch.manual_seed(2)
    theirs = their_peer(non_competing_scores=False)
    ours = from_peer_pytorch(theirs)
    x = torch.randn(2, 6, 32)
    theirs(x).square().sum().backward()
    ours(x).square().sum().backward()
    p = ours.peer
    H, Q = theirs.keys.shape[0], theirs.keys.shape[-1]
    pairs = [
        (p.keys_GPRQ.grad, theirs.keys.grad.permute(0, 2, 1, 3)),
        (p.query.weight.grad, theirs.to_queries[0].weight.grad.view(2, H, Q, 32).transpose(0, 1).reshape(-1, 32)),
        (p.u_ND.grad, theirs.weight_down_embed.weight.grad),
        (p.v_ND.grad, theirs.weight_up_embed.weight.grad),
    ]
    for ours_grad, their_grad in pairs:
        torch.testing.assert_close(ours_grad, their_grad, rtol=1e-5, atol=1e-5 * their_grad.abs().max().item())


def test_weights_are_copies_not_views():
    theirs = their_peer()
    ours = from_peer_pytorch(theirs)
    with torch.no_grad():
        theirs.weight_up_embed.weight.zero_()
    assert ours.peer.v_ND.abs().sum() > 0


def test_unsupported_options_are_refused():
    with pytest.raises(ValueError, match="separate_embed_per_head"):
        from_peer_pytorch(their_peer(separate_embed_per_head=True))
    with pytest.raises(ValueError, match="product_key_topk"):
        from_peer_pytorch(their_peer(non_competing_scores=False, product_key_topk=2))
    with pytest.raises(ValueError, match="activation"):
        from_peer_pytorch(their_peer(activation=nn.SiLU))
    with pytest.raises(ValueError, match="expects a PEER_pytorch.PEER"):
        from_peer_pytorch(nn.Linear(4, 4))
    theirs = their_peer(dropout=0.1)
    ours = from_peer_pytorch(theirs)
    with pytest.raises(ValueError, match="dropout"):
        ours(torch.randn(1, 2, 32))  # converted modules follow the source's mode: training here
    theirs.eval()
    assert_same_function(theirs, ours.eval(), torch.randn(1, 3, 32))


@pytest.mark.parametrize("experts_impl", ["torch", "compile", "native"])
def test_native_topk_inference_matches(experts_impl):
    from moebench.kernels import native_build

    if not native_build.compiler_present():
        pytest.skip("no C compiler on PATH (or CC)")
    torch.manual_seed(3)
    theirs = their_peer(non_competing_scores=False, num_experts=32**2, heads=3).eval()
    ours = from_peer_pytorch(theirs).eval()
    ours.peer.topk_impl, ours.peer.experts_impl = "native", experts_impl
    with torch.no_grad():
        assert_same_function(theirs, ours, torch.randn(2, 9, 32))
