"""Load a PEER_pytorch.PEER (lucidrains' PEER-pytorch, optional extra [hf]) into moebench's PEER layer.

How its weights map onto ours (moebench.layers.peer):
    to_queries[0].weight [P*H*Q, D], rows ordered (p, h, q)  ->  query.weight, rows ordered (h, p, q)
    keys [H, R, P, Q] (one key set per head)                   ->  keys_GPRQ [H, P, R, Q], shared_keys=False
    weight_down_embed / weight_up_embed [N, D]                 ->  u_ND / v_ND
    dim_key (per half)                                         ->  d_key = 2 * dim_key
    non_competing_scores=True (its default): top-1 per head, relu(score)  ->  peer_k=1, peer_score="relu"
    non_competing_scores=False: top num_experts_per_head, softmax          ->  peer_k=k, peer_score="softmax"
    pre_rmsnorm                                                 ->  the same RMSNorm in front of our layer
It has no query BatchNorm. Its per-half candidate count product_key_topk may exceed the number kept:
retrieval is exact, so our per-half top-k gives the same experts (up to ties). Refused with a
ValueError: separate_embed_per_head, product_key_topk below the number kept, activations other than
nn.GELU() / nn.ReLU(); dropout > 0 converts but the result refuses to run in training mode.
Axis legend: D model dim, H heads, N experts, R sub-keys per half, P = 2 halves, Q = dim_key.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from moebench.layers.peer import PEER
from moebench.spec import LayerSpec

_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


class PeerRMSNorm(nn.Module):
    """PEER-pytorch's RMSNorm: normalize(x) * sqrt(D) * (gamma + 1), gamma initialised at 0."""

    def __init__(self, gamma_D: torch.Tensor):
        super().__init__()
        self.gamma_D = nn.Parameter(gamma_D.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) * math.sqrt(x.shape[-1]) * (self.gamma_D + 1)


class FromPeerPytorch(nn.Module):
    """[B, T, D] -> [B, T, D]: optional pre-RMSNorm, then moebench's PEER (in `.peer`)."""

    def __init__(self, peer: PEER, norm: PeerRMSNorm | None, dropout: float):
        super().__init__()
        self.norm = norm
        self.peer = peer
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.dropout > 0:
            raise ValueError(f"PEER-pytorch dropout={self.dropout} is not supported in training mode; "
                             "call .eval() or convert a module built with dropout=0")
        return self.peer(self.norm(x) if self.norm is not None else x)


def _activation_name(act: nn.Module) -> str:
    if type(act) is nn.GELU and act.approximate == "none":
        return "gelu"
    if type(act) is nn.ReLU:
        return "relu"
    raise ValueError(f"PEER-pytorch activation {act!r} is not supported: allowed are nn.GELU() and nn.ReLU()")


def from_peer_pytorch(module: nn.Module) -> FromPeerPytorch:
    """Our PEER layer holding copies of `module`'s exact weights (same device and dtype)."""
    from PEER_pytorch import PEER as TheirPEER  # optional dependency: imported only when used

    if not isinstance(module, TheirPEER):
        raise ValueError(f"from_peer_pytorch expects a PEER_pytorch.PEER, got {type(module).__name__}")
    if module.separate_embed_per_head:
        raise ValueError("PEER-pytorch separate_embed_per_head=True is not supported: moebench's heads share experts")
    non_competing = isinstance(module.score_activation, nn.ReLU)
    k = module.num_experts_per_head_topk  # 1 when non_competing_scores
    if module.product_key_topk < k:
        raise ValueError(f"PEER-pytorch product_key_topk={module.product_key_topk} < experts kept per head ({k}) "
                         "is approximate retrieval, not supported: moebench's product retrieval is exact")
    H, R, _, Q = module.keys.shape
    D = module.weight_down_embed.embedding_dim
    dtype = module.keys.dtype
    if dtype not in _DTYPE_NAMES:
        raise ValueError(f"PEER-pytorch weights in {dtype} are not supported: allowed are "
                         + ", ".join(_DTYPE_NAMES.values()))
    spec = LayerSpec(variant="peer", d_model=D, peer_experts=module.num_experts, peer_heads=H, peer_k=k,
                     d_key=2 * Q, peer_query_batchnorm=False, peer_retrieval="product",
                     peer_score="relu" if non_competing else "softmax",
                     activation=_activation_name(module.activation), dtype=_DTYPE_NAMES[dtype])
    ours = PEER(spec, shared_keys=False).to(module.keys.device)
    with torch.no_grad():
        w_PHQD = module.to_queries[0].weight.view(2, H, Q, D)
        ours.query.weight.copy_(w_PHQD.permute(1, 0, 2, 3).reshape(H * 2 * Q, D))
        ours.keys_GPRQ.copy_(module.keys.permute(0, 2, 1, 3))  # [H, R, P, Q] -> [H, P, R, Q]
        ours.u_ND.copy_(module.weight_down_embed.weight)
        ours.v_ND.copy_(module.weight_up_embed.weight)
    norm = None
    if not isinstance(module.norm, nn.Identity):
        norm = PeerRMSNorm(module.norm.gamma).to(module.keys.device)
    return FromPeerPytorch(ours, norm, module.dropout.p).train(module.training)
