"""hf_config: config.json dicts -> ModelShape / LayerSpec.

Two references: the presets (each published model's config.json values, written out below, must give
its preset exactly) and transformers itself (tiny models built on the meta device must have exactly the
parameter count accounting derives from their config's to_dict()).
"""

from __future__ import annotations

import dataclasses
import re

import pytest

from moebench import accounting as acc
from moebench.interop.hf_config import SUPPORTED, layer_spec_from_hf_config, model_from_hf_config
from moebench.presets import PRESETS

_DS = dict(hidden_act="silu", tie_word_embeddings=False, torch_dtype="bfloat16", vocab_size=102400,
           moe_layer_freq=1, scoring_func="softmax", norm_topk_prob=False, seq_aux=True, rms_norm_eps=1e-6)
# config.json values of the released checkpoints (keys that do not matter for counting trimmed)
CONFIG_JSON = {
    "mixtral-8x7b": dict(model_type="mixtral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, vocab_size=32000, num_local_experts=8,
                         num_experts_per_tok=2, hidden_act="silu", tie_word_embeddings=False,
                         router_aux_loss_coef=0.02, torch_dtype="bfloat16", rope_theta=1e6, sliding_window=None,
                         architectures=["MixtralForCausalLM"]),
    "deepseek-v2": dict(model_type="deepseek_v2", hidden_size=5120, intermediate_size=12288, moe_intermediate_size=1536,
                        num_hidden_layers=60, num_attention_heads=128, num_key_value_heads=128, n_shared_experts=2,
                        n_routed_experts=160, routed_scaling_factor=16.0, kv_lora_rank=512, q_lora_rank=1536,
                        qk_rope_head_dim=64, v_head_dim=128, qk_nope_head_dim=128, topk_method="group_limited_greedy",
                        n_group=8, topk_group=3, num_experts_per_tok=6, first_k_dense_replace=1,
                        aux_loss_alpha=0.003, **_DS),
    "deepseek-v2-lite": dict(model_type="deepseek_v2", hidden_size=2048, intermediate_size=10944,
                             moe_intermediate_size=1408, num_hidden_layers=27, num_attention_heads=16,
                             num_key_value_heads=16, n_shared_experts=2, n_routed_experts=64,
                             routed_scaling_factor=1.0, kv_lora_rank=512, q_lora_rank=None, qk_rope_head_dim=64,
                             v_head_dim=128, qk_nope_head_dim=128, topk_method="greedy", n_group=1, topk_group=1,
                             num_experts_per_tok=6, first_k_dense_replace=1, aux_loss_alpha=0.001, **_DS),
    "deepseekmoe-16b": dict(model_type="deepseek", hidden_size=2048, intermediate_size=10944,
                            moe_intermediate_size=1408, num_hidden_layers=28, num_attention_heads=16,
                            num_key_value_heads=16, n_shared_experts=2,
                            n_routed_experts=64, num_experts_per_tok=6, first_k_dense_replace=1, aux_loss_alpha=0.001,
                            **_DS),
    "deepseek-v3": dict(model_type="deepseek_v3", hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048,
                        num_hidden_layers=61, num_attention_heads=128, num_key_value_heads=128, n_shared_experts=1,
                        n_routed_experts=256, routed_scaling_factor=2.5, kv_lora_rank=512, q_lora_rank=1536,
                        qk_rope_head_dim=64, v_head_dim=128, qk_nope_head_dim=128, topk_method="noaux_tc", n_group=8,
                        topk_group=4, num_experts_per_tok=8, first_k_dense_replace=3, num_nextn_predict_layers=1,
                        aux_loss_alpha=0.001, **{**_DS, "vocab_size": 129280, "scoring_func": "sigmoid",
                                                 "norm_topk_prob": True}),
    "qwen2-57b-a14b": dict(model_type="qwen2_moe", hidden_size=3584, intermediate_size=18944,
                           moe_intermediate_size=2560, shared_expert_intermediate_size=20480, num_hidden_layers=28,
                           num_attention_heads=28,
                           num_key_value_heads=4, vocab_size=151936, num_experts=64, num_experts_per_tok=8,
                           norm_topk_prob=False, decoder_sparse_step=1, mlp_only_layers=[], hidden_act="silu",
                           tie_word_embeddings=False, router_aux_loss_coef=0.001, torch_dtype="bfloat16"),
    "qwen1.5-moe-a2.7b": dict(model_type="qwen2_moe", hidden_size=2048, intermediate_size=5632,
                              moe_intermediate_size=1408, shared_expert_intermediate_size=5632, num_hidden_layers=24,
                              num_attention_heads=16, num_key_value_heads=16, vocab_size=151936, num_experts=60,
                              num_experts_per_tok=4, norm_topk_prob=False, decoder_sparse_step=1, hidden_act="silu",
                              tie_word_embeddings=False, router_aux_loss_coef=0.001, torch_dtype="bfloat16"),
    "olmoe-1b-7b": dict(model_type="olmoe", hidden_size=2048, intermediate_size=1024, num_hidden_layers=16,
                        num_attention_heads=16, num_key_value_heads=16, vocab_size=50304, num_experts=64,
                        num_experts_per_tok=8, norm_topk_prob=False, router_aux_loss_coef=0.01, clip_qkv=None,
                        hidden_act="silu", tie_word_embeddings=False, torch_dtype="bfloat16"),
    "jamba-v0.1": dict(model_type="jamba", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, vocab_size=65536, num_experts=16,
                       num_experts_per_tok=2, expert_layer_period=2, expert_layer_offset=1, attn_layer_period=8,
                       attn_layer_offset=4, mamba_d_state=16, mamba_d_conv=4, mamba_expand=2, mamba_dt_rank=256,
                       mamba_conv_bias=True, mamba_proj_bias=False, hidden_act="silu", tie_word_embeddings=False,
                       router_aux_loss_coef=0.001, torch_dtype="bfloat16"),
}


def _comparable(shape):
    """Name and the training-only aux-loss coefficient are not structure."""
    return dataclasses.replace(shape, name="", moe=shape.moe.replace(aux_loss_coef=0.0))


def test_every_preset_has_a_config():
    assert set(CONFIG_JSON) == set(PRESETS)


@pytest.mark.parametrize("name", list(CONFIG_JSON))
def test_config_json_gives_the_preset(name):
    shape = model_from_hf_config(CONFIG_JSON[name])
    assert _comparable(shape) == _comparable(PRESETS[name])
    assert acc.model_params(shape) == acc.model_params(PRESETS[name])
    assert acc.model_active_params(shape) == acc.model_active_params(PRESETS[name])
    assert layer_spec_from_hf_config(CONFIG_JSON[name]) == shape.moe


def test_layer_spec_overrides_and_routing_fields():
    v2 = layer_spec_from_hf_config(CONFIG_JSON["deepseek-v2"], dtype="float32", backend="loop")
    assert (v2.dtype, v2.backend, v2.variant, v2.n_groups, v2.topk_groups, v2.routed_scaling) == \
        ("float32", "loop", "deepseek", 8, 3, 16.0)
    assert (v2.score_func, v2.renormalize, v2.expert_bias, v2.aux_loss_coef) == ("softmax", False, False, 0.003)
    v3 = layer_spec_from_hf_config(CONFIG_JSON["deepseek-v3"])
    assert (v3.score_func, v3.renormalize, v3.expert_bias, v3.n_groups, v3.topk_groups) == ("sigmoid", True, True, 8, 4)
    lite = layer_spec_from_hf_config(CONFIG_JSON["deepseek-v2-lite"])
    assert (lite.n_groups, lite.topk_groups) == (1, 1)
    qwen = layer_spec_from_hf_config(CONFIG_JSON["qwen2-57b-a14b"])
    assert (qwen.n_shared, qwen.shared_d_ff, qwen.shared_gate, qwen.renormalize) == (1, 20480, True, False)
    assert layer_spec_from_hf_config(CONFIG_JSON["mixtral-8x7b"]).renormalize
    with pytest.raises(ValueError, match="LayerSpec has no field 'experts'"):
        layer_spec_from_hf_config(CONFIG_JSON["mixtral-8x7b"], experts=3)


def test_unknown_model_type_and_missing_keys():
    with pytest.raises(ValueError, match="model_type='llama' is not supported; supported model types are mixtral"):
        model_from_hf_config({"model_type": "llama"})
    with pytest.raises(ValueError, match="model_type=None"):
        model_from_hf_config({})
    cfg = {k: v for k, v in CONFIG_JSON["deepseek-v3"].items() if k != "kv_lora_rank"}
    with pytest.raises(ValueError, match="config has no 'kv_lora_rank'.*deepseek_v3.*supported model types"):
        model_from_hf_config(cfg)
    cfg = {k: v for k, v in CONFIG_JSON["mixtral-8x7b"].items() if k != "num_local_experts"}
    with pytest.raises(ValueError, match="'num_local_experts'"):
        layer_spec_from_hf_config(cfg)
    with pytest.raises(ValueError, match="hidden_act='gelu' is not supported"):
        layer_spec_from_hf_config({**CONFIG_JSON["mixtral-8x7b"], "hidden_act": "gelu"})
    with pytest.raises(ValueError, match="must be a JSON object"):
        model_from_hf_config([1, 2])


def test_commonly_omitted_keys_take_transformers_defaults():
    cfg = {k: v for k, v in CONFIG_JSON["mixtral-8x7b"].items()
           if k not in ("num_key_value_heads", "tie_word_embeddings", "torch_dtype")}
    shape = model_from_hf_config(cfg)
    assert (shape.attention.n_kv_heads, shape.attention.head_dim, shape.tie_embeddings) == (32, 128, False)
    assert shape.moe.dtype == "float32"


# --- against transformers' own models -------------------------------------------------------------

transformers_cases = {
    "mixtral": dict(intermediate_size=48, num_local_experts=4, head_dim=24),
    "mixtral_tied": dict(intermediate_size=48, num_local_experts=4, tie_word_embeddings=True),
    "olmoe": dict(intermediate_size=48, num_experts=4, num_key_value_heads=2),
    "qwen2_moe": dict(moe_intermediate_size=24, shared_expert_intermediate_size=40, num_experts=4,
                      intermediate_size=56, decoder_sparse_step=2, mlp_only_layers=[3]),
    "deepseek_v2": dict(moe_intermediate_size=24, n_routed_experts=4, n_shared_experts=2, intermediate_size=56,
                        first_k_dense_replace=1, q_lora_rank=None, kv_lora_rank=16, qk_nope_head_dim=8,
                        qk_rope_head_dim=4, v_head_dim=12),
    "deepseek_v3": dict(moe_intermediate_size=24, n_routed_experts=4, n_shared_experts=1, intermediate_size=56,
                        first_k_dense_replace=2, q_lora_rank=20, kv_lora_rank=16, qk_nope_head_dim=8,
                        qk_rope_head_dim=4, v_head_dim=12, n_group=2, topk_group=1),
    "jamba": dict(intermediate_size=48, num_experts=4, attn_layer_period=2, attn_layer_offset=1,
                  expert_layer_period=2, expert_layer_offset=0, mamba_d_state=4, mamba_dt_rank="auto"),
}


@pytest.mark.parametrize("case", list(transformers_cases))
def test_param_count_equals_transformers_model(case):
    """A tiny model of each supported type, built by transformers on the meta device (no memory)."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    model_type = case.split("_tied")[0]
    cls = transformers.AutoConfig.for_model(model_type).__class__
    config = cls(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, vocab_size=100, num_experts_per_tok=2,
                 **transformers_cases[case])
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    shape = model_from_hf_config(config.to_dict())
    assert sum(acc.model_params(shape).values()) == sum(p.numel() for p in model.parameters())


def test_supported_types_are_all_exercised():
    types = {cfg["model_type"] for cfg in CONFIG_JSON.values()}
    assert set(SUPPORTED) == types


@pytest.mark.parametrize("key, value, allowed", [
    ("num_hidden_layers", 1e30, "must be an integer in [1, 100,000]"),
    ("num_hidden_layers", 100_001, "must be an integer in [1, 100,000]"),  # 10**30: tests/test_cli.py, bounded
    ("num_hidden_layers", True, "must be an integer"),
    ("hidden_size", "4096", "must be an integer in [1, 1,048,576]"),
    ("hidden_size", 4096.0, "must be an integer"),
    ("vocab_size", 10**12, "must be an integer in [1, 16,777,216]"),
    ("num_local_experts", 2**40, "must be an integer in [1, 1,048,576]"),
    ("num_key_value_heads", -8, "must be an integer"),
    ("router_aux_loss_coef", float("nan"), "must be a finite number"),
    ("router_aux_loss_coef", [0.02], "must be a finite number"),
])
def test_absurd_or_mistyped_sizes_are_refused_naming_the_key(key, value, allowed):
    """A config with 1e30 layers would otherwise hang counting them (layer rules are evaluated per layer)."""
    with pytest.raises(ValueError, match=rf"config {key}=.* is invalid: {re.escape(allowed)}"):
        model_from_hf_config({**CONFIG_JSON["mixtral-8x7b"], key: value})


def test_mistyped_qwen_and_jamba_layer_lists_are_refused():
    qwen = CONFIG_JSON["qwen2-57b-a14b"]
    with pytest.raises(ValueError, match="config mlp_only_layers=5 is invalid: must be a list of layer indices"):
        model_from_hf_config({**qwen, "mlp_only_layers": 5})
    with pytest.raises(ValueError, match=r"config decoder_sparse_step=0 is invalid"):
        model_from_hf_config({**qwen, "decoder_sparse_step": 0})
