"""HuggingFace transformers MoE blocks -> moebench layers that carry the same weights.

    from_hf_block(block)        a transformers MoE block instance -> moebench layer, same outputs
    spec_from_hf_block(block)   the LayerSpec the block implies, read from its weights and attributes
    spec_from_hf_config(cfg)    the LayerSpec of a transformers config (PretrainedConfig or dict)

Supported blocks (transformers 5 fused expert weights; per-expert ModuleLists of older versions are
stacked) and the moebench variant each maps to:

    MixtralSparseMoeBlock    token_choice  softmax, top-K scores renormalised
    OlmoeSparseMoeBlock      token_choice  softmax, renormalised iff norm_topk_prob
    Qwen2MoeSparseMoeBlock   token_choice  + one shared expert scaled by sigmoid(x . w_shared_gate)
    DeepseekV2Moe            deepseek      softmax, never renormalised, optional group-limited greedy
    DeepseekV3MoE            deepseek      sigmoid, e_score_correction_bias for selection, groups

Weights need no transpose: moebench uses transformers' (out, in) layout, gate rows before up rows.
Differences by design (compare in eval mode, in the block's own dtype):
- Mixtral's router_jitter_noise multiplies the block input in place in training, so its experts
  see jittered activations too; moebench's jitter perturbs the router input only.
- transformers may keep the DeepSeek router weight in fp32 inside a bf16 model; the moebench layer
  holds every weight in the spec's dtype (taken from the expert weights).
Axis legend: E experts, D model dim, F expert hidden dim, I = 2F rows of a fused gate+up weight.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from moebench.interop.hf_config import layer_spec_from_hf_config
from moebench.layers import build_layer
from moebench.spec import LayerSpec

_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def spec_from_hf_config(config: Any, **overrides: Any) -> LayerSpec:
    """LayerSpec of a transformers config (a PretrainedConfig or its to_dict()); see hf_config."""
    cfg = config if isinstance(config, dict) else config.to_dict()
    return layer_spec_from_hf_config(cfg, **overrides)


# --- reading weights -------------------------------------------------------------------------


def _no_bias(*linears: nn.Linear) -> None:
    if any(lin.bias is not None for lin in linears):
        raise ValueError("MoE blocks with biased expert projections are not supported (moebench experts have no bias)")


def _mlp_weights(mlp: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(w_in_ID, w_out_DF) of one gated MLP: gate_proj/up_proj/down_proj, or Mixtral 4.x w1/w3/w2."""
    names = ("gate_proj", "up_proj", "down_proj") if hasattr(mlp, "gate_proj") else ("w1", "w3", "w2")
    gate, up, down = (getattr(mlp, name) for name in names)
    _no_bias(gate, up, down)
    _check_silu(mlp.act_fn, type(mlp).__name__)
    return torch.cat([gate.weight, up.weight]), down.weight


def _expert_weights(experts: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(w_in_EID, w_out_EDF) of the routed experts."""
    if isinstance(experts, nn.ModuleList):  # transformers 4.x: one MLP module per expert
        w_in, w_out = zip(*(_mlp_weights(mlp) for mlp in experts), strict=True)
        return torch.stack(w_in), torch.stack(w_out)
    # The fused layout flags come from transformers' @use_experts_implementation.
    expected = {"is_transposed": False, "is_concatenated": True, "has_bias": False, "has_gate": True,
                "has_post_expert_norm": False}
    for flag, want in expected.items():
        if getattr(experts, flag, want) != want:
            raise ValueError(f"{type(experts).__name__}.{flag}={not want} is not supported: moebench experts "
                             "are fused [gate; up] rows in (out, in) layout without bias or post-norm")
    _check_silu(experts.act_fn, type(experts).__name__)
    return experts.gate_up_proj, experts.down_proj


def _check_silu(act_fn: Any, owner: str) -> None:
    # SwiGLU is moebench's only gated activation. Probe the function instead of trusting a config
    # string: ACT2FN maps several names ("silu", "swish") to the same module.
    probe = torch.linspace(-4, 4, 17)
    if not torch.allclose(act_fn(probe), F.silu(probe)):
        raise ValueError(f"{owner} uses an activation other than SiLU; moebench supports gated experts with "
                         "SiLU (swiglu) only")


def _dtype_name(w: torch.Tensor) -> str:
    if w.dtype not in _DTYPES:
        raise ValueError(f"weights of dtype {w.dtype} are not supported; use one of " + ", ".join(_DTYPES.values()))
    return _DTYPES[w.dtype]


# --- one reader per block class: (spec fields, moebench parameter name -> tensor) ---------------


def _read_routed(block: nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """What every supported block shares: router weight [E, D] and the routed experts."""
    w_in_EID, w_out_EDF = _expert_weights(block.experts)
    E, D, Fh = w_out_EDF.shape
    fields = dict(d_model=D, d_ff=Fh, n_experts=E, top_k=block.gate.top_k, activation="swiglu",
                  dtype=_dtype_name(w_in_EID))
    return fields, {"router.w_gate_ED": block.gate.weight, "experts.w_in_EID": w_in_EID,
                    "experts.w_out_EDF": w_out_EDF}


def _read_shared(mlp: nn.Module, n_shared: int, fields: dict[str, Any], params: dict[str, torch.Tensor]) -> None:
    w_in_ID, w_out_DF = _mlp_weights(mlp)
    width = w_out_DF.shape[1]
    if width % n_shared:  # S experts of width shared_d_ff are one FFN of width S * shared_d_ff
        n_shared = 1
    fields.update(n_shared=n_shared, shared_d_ff=width // n_shared)
    params.update({"shared.w_in_ID": w_in_ID, "shared.w_out_DF": w_out_DF})


def _read_mixtral(block: nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    fields, params = _read_routed(block)
    fields.update(variant="token_choice", score_func="softmax", renormalize=True,
                  jitter=float(block.jitter_noise or 0.0))
    return fields, params


def _read_olmoe(block: nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    fields, params = _read_routed(block)
    fields.update(variant="token_choice", score_func="softmax", renormalize=bool(block.gate.norm_topk_prob))
    return fields, params


def _read_qwen2_moe(block: nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    fields, params = _read_olmoe(block)  # same router; plus a sigmoid-gated shared expert
    _read_shared(block.shared_expert, 1, fields, params)
    fields.update(shared_gate=True)
    params["shared_gate.weight"] = block.shared_expert_gate.weight
    return fields, params


def _read_deepseek_v2(block: nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    fields, params = _read_routed(block)
    gate = block.gate
    if gate.topk_method not in ("greedy", "group_limited_greedy"):
        raise ValueError(f"DeepseekV2 topk_method={gate.topk_method!r} is not supported; "
                         "allowed values are greedy, group_limited_greedy")
    grouped = gate.topk_method == "group_limited_greedy"
    # transformers' V2 router never renormalises the top-K scores, whatever norm_topk_prob says.
    fields.update(variant="deepseek", score_func="softmax", renormalize=False,
                  routed_scaling=float(gate.routed_scaling_factor),
                  n_groups=gate.num_group if grouped else 1, topk_groups=gate.topk_group if grouped else 1)
    _read_shared(block.shared_experts, block.config.n_shared_experts, fields, params)
    return fields, params


def _read_deepseek_v3(block: nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    fields, params = _read_routed(block)
    gate = block.gate
    fields.update(variant="deepseek", score_func="sigmoid", renormalize=bool(gate.norm_topk_prob),
                  routed_scaling=float(gate.routed_scaling_factor), expert_bias=True,
                  n_groups=gate.num_group, topk_groups=gate.topk_group)
    params["router.bias_E"] = gate.e_score_correction_bias
    _read_shared(block.shared_experts, block.config.n_shared_experts, fields, params)
    return fields, params


READERS = {
    "MixtralSparseMoeBlock": _read_mixtral,
    "OlmoeSparseMoeBlock": _read_olmoe,
    "Qwen2MoeSparseMoeBlock": _read_qwen2_moe,
    "DeepseekV2Moe": _read_deepseek_v2,
    "DeepseekV3MoE": _read_deepseek_v3,
}


def _reader(block: nn.Module):
    # Match by class name through the MRO, so this module never imports transformers and
    # subclasses of a supported block are accepted.
    for cls in type(block).__mro__:
        if cls.__name__ in READERS:
            return READERS[cls.__name__]
    raise ValueError(f"unsupported MoE block type {type(block).__name__!r}; supported blocks are "
                     + ", ".join(READERS))


# --- public API ---------------------------------------------------------------------------------


def spec_from_hf_block(block: nn.Module, backend: str | None = None) -> LayerSpec:
    """The LayerSpec a transformers MoE block implies (shapes from its weights, routing from its router)."""
    fields, _ = _reader(block)(block)
    if backend is not None:
        fields["backend"] = backend
    return LayerSpec(**fields)


@torch.no_grad()
def from_hf_block(block: nn.Module, backend: str | None = None) -> nn.Module:
    """A moebench layer computing what `block` computes, with copies of its weights.

    It takes x [B, T, D] (any [..., D]) and returns y of the same shape; `last_stats` holds the
    RoutingStats of its last forward. `backend` overrides the spec's dispatch backend.
    """
    fields, params = _reader(block)(block)
    if backend is not None:
        fields["backend"] = backend
    layer = build_layer(LayerSpec(**fields))
    targets = dict(layer.named_parameters()) | dict(layer.named_buffers())
    for name, src in params.items():
        if name not in targets:
            raise ValueError(f"layer {type(layer).__name__} has no tensor {name!r} to receive the block's weight")
        if targets[name].shape != src.shape:
            raise ValueError(f"{name}: block weight has shape {tuple(src.shape)}, layer expects "
                             f"{tuple(targets[name].shape)}")
        targets[name].copy_(src)
    missing = sorted(set(dict(layer.named_parameters())) - set(params))
    assert not missing, f"parameters left at random init: {missing}"
    return layer.train(block.training)
