"""MoE layer variants, one file each; build_layer(spec) picks the class by spec.variant.

Every layer takes x of shape [..., D] (and token_ids for hash routing) and returns [..., D]; routed
layers leave the RoutingStats of their last forward in `layer.last_stats`.
"""

from __future__ import annotations

from torch import nn

from moebench.layers.deepseek import DeepSeekMoE
from moebench.layers.dense import DenseFFN
from moebench.layers.expert_choice import ExpertChoiceMoE
from moebench.layers.gshard import GShardMoE
from moebench.layers.hash import HashMoE
from moebench.layers.lifelong import LifelongMoE
from moebench.layers.peer import PEER
from moebench.layers.rl import RLMoE
from moebench.layers.sinkhorn import SinkhornMoE
from moebench.layers.token_choice import TokenChoiceMoE
from moebench.spec import LayerSpec

VARIANTS: dict[str, type[nn.Module]] = {
    "dense": DenseFFN,
    "deepseek": DeepSeekMoE,
    "lifelong": LifelongMoE,
    "token_choice": TokenChoiceMoE,
    "gshard": GShardMoE,
    "expert_choice": ExpertChoiceMoE,
    "hash": HashMoE,
    "sinkhorn": SinkhornMoE,
    "rl": RLMoE,
    "peer": PEER,
}


def build_layer(spec: LayerSpec) -> nn.Module:
    """The module for a spec, initialised with random weights in the spec's dtype."""
    if spec.variant not in VARIANTS:
        raise ValueError(f"LayerSpec.variant={spec.variant!r} has no implementation; built variants are "
                         + ", ".join(VARIANTS))
    return VARIANTS[spec.variant](spec)


__all__ = ["VARIANTS", "build_layer"]
