"""HuggingFace config.json (a plain dict) -> ModelShape and the LayerSpec of its MoE layer.

Pure JSON: transformers is not imported, so `moebench params config.json` works without the [hf]
extra. A transformers config's to_dict() works too: keys this module does not read are ignored.

    model_from_hf_config(cfg)                  ModelShape (moebench.presets) for parameter / FLOP accounting
    layer_spec_from_hf_config(cfg, **over)     LayerSpec of the MoE layer; `over` replaces LayerSpec fields

Supported model types and what maps where:
    mixtral      token_choice, softmax, top-K renormalised
    olmoe        token_choice, renormalised iff norm_topk_prob; q/k RMSNorm in attention
    qwen2_moe    token_choice (+ one shared expert of shared_expert_intermediate_size behind a sigmoid
                 gate); MoE layers by decoder_sparse_step and mlp_only_layers; q/k/v bias
    deepseek     DeepSeekMoE (16B; trust_remote_code type): deepseek variant, MHA attention
    deepseek_v2  deepseek variant, softmax, MLA; group-limited routing iff topk_method is
                 group_limited_greedy; first_k_dense_replace dense layers (then every moe_layer_freq-th)
    deepseek_v3  as v2 with sigmoid scores and the selection bias (noaux_tc); MTP modules not counted
    jamba        token_choice, not renormalised; Mamba mixers except every attn_layer_period-th layer
A key the model needs and the dict lacks raises ValueError naming it. Keys that config.json files
commonly omit take transformers' defaults (num_key_value_heads = heads, head_dim = D / heads,
tie_word_embeddings False, ...). Training-only coefficients (router_aux_loss_coef, aux_loss_alpha,
router_z_loss_coef) are copied when present, else LayerSpec's defaults stay.

Every size read is checked to be an integer within _INT_RANGES (not a bool, float or string) and every
coefficient a finite number, so a hostile config (1e30 layers, a string vocab) is a ValueError naming
the key rather than a hang (layer rules are evaluated layer by layer) or an overflow.
"""

from __future__ import annotations

import math
from typing import Any

from moebench.presets import Attention, Mamba, ModelShape
from moebench.spec import DTYPES, LayerSpec

SUPPORTED = ("mixtral", "olmoe", "qwen2_moe", "deepseek", "deepseek_v2", "deepseek_v3", "jamba")
_MISSING = object()

# Caps far above every published model (DeepSeek-V3: 61 layers, hidden 7168, vocab 129,280, 256 experts;
# Jamba: 72 layers) that keep counting instant and exact.
MAX_LAYERS = 100_000
MAX_WIDTH = 1 << 20  # hidden and FFN widths, heads, head dims, experts
MAX_VOCAB = 1 << 24
_LAYERS = (1, MAX_LAYERS)
_WIDTH = (1, MAX_WIDTH)
_INT_RANGES: dict[str, tuple[int, int]] = {
    "num_hidden_layers": _LAYERS, "vocab_size": (1, MAX_VOCAB),
    "hidden_size": _WIDTH, "intermediate_size": _WIDTH, "moe_intermediate_size": _WIDTH,
    "shared_expert_intermediate_size": (0, MAX_WIDTH),
    "num_local_experts": _WIDTH, "num_experts": _WIDTH, "n_routed_experts": _WIDTH, "n_shared_experts": (0, MAX_WIDTH),
    "num_experts_per_tok": _WIDTH, "n_group": _WIDTH, "topk_group": _WIDTH,
    "num_attention_heads": _WIDTH, "num_key_value_heads": _WIDTH, "head_dim": _WIDTH,
    "q_lora_rank": _WIDTH, "kv_lora_rank": _WIDTH, "qk_nope_head_dim": _WIDTH, "qk_rope_head_dim": _WIDTH,
    "v_head_dim": _WIDTH,
    "first_k_dense_replace": (0, MAX_LAYERS), "moe_layer_freq": _LAYERS, "decoder_sparse_step": _LAYERS,
    "expert_layer_period": _LAYERS, "expert_layer_offset": (0, MAX_LAYERS),
    "attn_layer_period": _LAYERS, "attn_layer_offset": (0, MAX_LAYERS),
    "mamba_expand": _WIDTH, "mamba_d_state": _WIDTH, "mamba_d_conv": _WIDTH,
}
_NUMBER_KEYS = ("routed_scaling_factor", "aux_loss_alpha", "router_aux_loss_coef", "router_z_loss_coef")


def _get(cfg: dict[str, Any], key: str, default: Any = _MISSING) -> Any:
    """cfg[key], checked against _INT_RANGES / _NUMBER_KEYS; None counts as absent (transformers writes
    None for 'derive me')."""
    value = cfg.get(key)
    if value is not None:
        _check_value(key, value)
        return value
    if default is _MISSING:
        raise ValueError(f"config has no {key!r}, which model_type {cfg.get('model_type')!r} needs "
                         f"(supported model types: {', '.join(SUPPORTED)})")
    return default


def _check_value(key: str, value: Any) -> None:
    if key in _INT_RANGES:
        lo, hi = _INT_RANGES[key]
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise ValueError(f"config {key}={value!r} is invalid: must be an integer in [{lo:,}, {hi:,}]")
    elif key in _NUMBER_KEYS:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise ValueError(f"config {key}={value!r} is invalid: must be a finite number")
    elif key == "mlp_only_layers":
        if not isinstance(value, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
            raise ValueError(f"config mlp_only_layers={value!r} is invalid: must be a list of layer indices")
    elif key == "mamba_dt_rank" and value != "auto":
        _check_value("mamba_d_state", value)  # an integer width, as d_state


def _model_type(cfg: dict[str, Any]) -> str:
    if not isinstance(cfg, dict):
        raise ValueError(f"config must be a JSON object (dict), got {type(cfg).__name__}")
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED:
        raise ValueError(f"config model_type={model_type!r} is not supported; supported model types are "
                         + ", ".join(SUPPORTED))
    return model_type


def _silu(cfg: dict[str, Any]) -> None:
    act = cfg.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise ValueError(f"config hidden_act={act!r} is not supported: moebench experts are SwiGLU (silu)")


def _deepseek_routing(cfg: dict[str, Any], model_type: str) -> dict[str, Any]:
    v3 = model_type == "deepseek_v3"
    method = cfg.get("topk_method") or ("noaux_tc" if v3 else "greedy")
    grouped = method in ("group_limited_greedy", "noaux_tc")
    fields = {
        "variant": "deepseek",
        "n_experts": _get(cfg, "n_routed_experts"),
        "n_shared": _get(cfg, "n_shared_experts", 0),
        "d_ff": _get(cfg, "moe_intermediate_size"),
        "score_func": _get(cfg, "scoring_func", "sigmoid" if v3 else "softmax"),
        "renormalize": bool(_get(cfg, "norm_topk_prob", False)),
        "routed_scaling": float(_get(cfg, "routed_scaling_factor", 1.0)),
        "expert_bias": method == "noaux_tc",
        "n_groups": _get(cfg, "n_group", 1) if grouped else 1,
        "topk_groups": _get(cfg, "topk_group", 1) if grouped else 1,
    }
    if _get(cfg, "aux_loss_alpha", None) is not None:
        fields["aux_loss_coef"] = float(cfg["aux_loss_alpha"])
    return fields


def _moe_fields(cfg: dict[str, Any], model_type: str) -> dict[str, Any]:
    """LayerSpec fields of the MoE layer, before overrides."""
    _silu(cfg)
    fields: dict[str, Any] = {"d_model": _get(cfg, "hidden_size"), "top_k": _get(cfg, "num_experts_per_tok"),
                              "activation": "swiglu"}
    if model_type.startswith("deepseek"):
        fields.update(_deepseek_routing(cfg, model_type))
    else:
        fields["variant"] = "token_choice"
        if model_type == "mixtral":
            fields.update(n_experts=_get(cfg, "num_local_experts"), d_ff=_get(cfg, "intermediate_size"),
                          renormalize=True)
        elif model_type == "olmoe":
            fields.update(n_experts=_get(cfg, "num_experts"), d_ff=_get(cfg, "intermediate_size"),
                          renormalize=bool(_get(cfg, "norm_topk_prob", False)))
        elif model_type == "jamba":
            fields.update(n_experts=_get(cfg, "num_experts"), d_ff=_get(cfg, "intermediate_size"),
                          renormalize=False)
        else:  # qwen2_moe
            fields.update(n_experts=_get(cfg, "num_experts"), d_ff=_get(cfg, "moe_intermediate_size"),
                          renormalize=bool(_get(cfg, "norm_topk_prob", False)))
            shared = _get(cfg, "shared_expert_intermediate_size")
            if shared:
                fields.update(n_shared=1, shared_d_ff=shared, shared_gate=True)
        if _get(cfg, "router_aux_loss_coef", None) is not None:
            fields["aux_loss_coef"] = float(cfg["router_aux_loss_coef"])
    # z-loss: only OLMoE trains with one; the others get 0 unless the config says otherwise.
    z_loss = _get(cfg, "router_z_loss_coef", None)
    fields["z_loss_coef"] = float(z_loss) if z_loss is not None else (0.001 if model_type == "olmoe" else 0.0)
    dtype = cfg.get("dtype") or cfg.get("torch_dtype")
    if dtype in DTYPES:
        fields["dtype"] = dtype
    return fields


def layer_spec_from_hf_config(cfg: dict[str, Any], **overrides: Any) -> LayerSpec:
    """The MoE layer of a config.json dict as a LayerSpec; overrides replace fields (dtype, backend, ...)."""
    fields = _moe_fields(cfg, _model_type(cfg))
    fields.update(overrides)
    return LayerSpec.from_dict(fields)


def _attention(cfg: dict[str, Any], model_type: str) -> Attention:
    heads = _get(cfg, "num_attention_heads")
    kv_heads = _get(cfg, "num_key_value_heads", heads)
    if model_type in ("deepseek_v2", "deepseek_v3"):
        # transformers' DeepseekV2/V3 config sets head_dim = qk_rope_head_dim: not read here.
        return Attention(heads, kv_heads, q_lora_rank=_get(cfg, "q_lora_rank", None),
                         kv_lora_rank=_get(cfg, "kv_lora_rank"), qk_nope_head_dim=_get(cfg, "qk_nope_head_dim"),
                         qk_rope_head_dim=_get(cfg, "qk_rope_head_dim"), v_head_dim=_get(cfg, "v_head_dim"))
    head_dim = _get(cfg, "head_dim", _get(cfg, "hidden_size") // heads)
    if model_type in ("deepseek", "olmoe", "mixtral", "jamba") and cfg.get("attention_bias"):
        raise ValueError(f"config attention_bias=True is not supported for model_type {model_type!r}")
    return Attention(heads, kv_heads, head_dim=head_dim, qkv_bias=model_type == "qwen2_moe" and
                     bool(_get(cfg, "qkv_bias", True)), qk_norm=model_type == "olmoe")


def _layer_pattern(cfg: dict[str, Any], model_type: str) -> dict[str, Any]:
    """Which layers are MoE / attention (ModelShape's period, offset and first-k fields)."""
    if model_type.startswith("deepseek"):
        return {"n_dense_layers": _get(cfg, "first_k_dense_replace", 0), "moe_period": _get(cfg, "moe_layer_freq", 1)}
    if model_type == "qwen2_moe":
        step = _get(cfg, "decoder_sparse_step", 1)
        return {"moe_period": step, "moe_offset": step - 1, "mlp_only_layers": tuple(_get(cfg, "mlp_only_layers", ()))}
    if model_type == "jamba":
        D = _get(cfg, "hidden_size")
        dt_rank = _get(cfg, "mamba_dt_rank", "auto")
        mamba = Mamba(d_inner=_get(cfg, "mamba_expand", 2) * D, d_state=_get(cfg, "mamba_d_state", 16),
                      d_conv=_get(cfg, "mamba_d_conv", 4),
                      dt_rank=math.ceil(D / 16) if dt_rank == "auto" else dt_rank,
                      conv_bias=bool(_get(cfg, "mamba_conv_bias", True)),
                      proj_bias=bool(_get(cfg, "mamba_proj_bias", False)))
        return {"moe_period": _get(cfg, "expert_layer_period", 2), "moe_offset": _get(cfg, "expert_layer_offset", 1),
                "attn_period": _get(cfg, "attn_layer_period", 8), "attn_offset": _get(cfg, "attn_layer_offset", 4),
                "mamba": mamba}
    return {}


def model_from_hf_config(cfg: dict[str, Any]) -> ModelShape:
    """The whole model of a config.json dict (see the module docstring for the supported types)."""
    model_type = _model_type(cfg)
    moe = layer_spec_from_hf_config(cfg)
    return ModelShape(
        name=str(cfg.get("_name_or_path") or model_type),
        n_layers=_get(cfg, "num_hidden_layers"),
        d_model=moe.d_model,
        vocab=_get(cfg, "vocab_size"),
        tie_embeddings=bool(_get(cfg, "tie_word_embeddings", False)),
        attention=_attention(cfg, model_type),
        moe=moe,
        dense_d_ff=_get(cfg, "intermediate_size"),
        **_layer_pattern(cfg, model_type),
    )


__all__ = ["SUPPORTED", "layer_spec_from_hf_config", "model_from_hf_config"]
