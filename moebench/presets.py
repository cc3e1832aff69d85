"""Whole-model shapes (ModelShape) and presets of published MoE models.

A ModelShape is what parameter and FLOP accounting needs about a decoder-only model: the layer stack
(which layers mix with attention or Mamba, which use the MoE FFN and which a dense FFN), the
attention geometry (GQA or DeepSeek MLA), the embeddings and the MoE layer as a LayerSpec. It is not a
runnable model; moebench.accounting counts it, moebench.interop.hf_config builds one from config.json.

Conventions: every norm is an RMSNorm (one weight vector, no bias); a layer has two (before the mixer,
before the FFN) plus one final norm. Layer i uses the MoE FFN iff
    i >= n_dense_layers  and  i % moe_period == moe_offset  and  i not in mlp_only_layers
(DeepSeek first_k_dense_replace / moe_layer_freq, Qwen2-MoE decoder_sparse_step / mlp_only_layers,
Jamba expert_layer_period / offset), else a dense FFN of width dense_d_ff. Layer i mixes with
attention iff i % attn_period == attn_offset, else with Mamba (Jamba).

Preset dims are the models' config.json values. PUBLISHED holds the figures their authors give and
which embedding convention reproduces the published active count (see accounting.model_active_params).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from moebench.spec import LayerSpec


def _positive(owner: str, name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{owner}.{name}={value!r} is invalid: must be a positive integer")


@dataclass(frozen=True)
class Attention:
    """Attention projections. kv_lora_rank set = DeepSeek MLA, else MHA/GQA with head_dim."""

    n_heads: int
    n_kv_heads: int
    head_dim: int = 0  # GQA only
    qkv_bias: bool = False  # Qwen2: bias on q, k, v (not o)
    qk_norm: bool = False  # OLMoE: RMSNorm over q (H*hd) and k (KV*hd)
    # MLA: q = W_qb norm(W_qa x) (or W_q x when q_lora_rank is None); [c_kv; k_rope] = W_kva x;
    # [k_nope; v] = W_kvb norm(c_kv); heads of qk_nope + qk_rope dims for q.k, v_head_dim for v.
    q_lora_rank: int | None = None
    kv_lora_rank: int | None = None
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0

    def __post_init__(self) -> None:
        _positive("Attention", "n_heads", self.n_heads)
        _positive("Attention", "n_kv_heads", self.n_kv_heads)
        if self.is_mla:
            for name in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
                _positive("Attention", name, getattr(self, name))
            if self.q_lora_rank is not None:
                _positive("Attention", "q_lora_rank", self.q_lora_rank)
        else:
            _positive("Attention", "head_dim", self.head_dim)

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank is not None


@dataclass(frozen=True)
class Mamba:
    """A Mamba mixer as in Jamba (transformers JambaMambaMixer)."""

    d_inner: int  # expand * D
    d_state: int
    d_conv: int
    dt_rank: int
    conv_bias: bool = True
    proj_bias: bool = False  # bias on in_proj and out_proj
    inner_norms: bool = True  # Jamba: RMSNorms on dt (dt_rank), B and C (d_state each)


@dataclass(frozen=True)
class ModelShape:
    """A decoder-only model as far as counting goes; see the module docstring for the layer rules."""

    name: str
    n_layers: int
    d_model: int
    vocab: int
    tie_embeddings: bool
    attention: Attention
    moe: LayerSpec  # the MoE FFN of every MoE layer
    dense_d_ff: int  # width of the dense FFN (swiglu) of the other layers
    n_dense_layers: int = 0  # first k layers dense (DeepSeek first_k_dense_replace)
    moe_period: int = 1
    moe_offset: int = 0
    mlp_only_layers: tuple[int, ...] = ()
    mamba: Mamba | None = None
    attn_period: int = 1
    attn_offset: int = 0
    dense_activation: str = field(default="swiglu")

    def __post_init__(self) -> None:
        for name in ("n_layers", "d_model", "vocab", "dense_d_ff", "moe_period", "attn_period"):
            _positive("ModelShape", name, getattr(self, name))
        if self.moe.d_model != self.d_model:
            raise ValueError(f"ModelShape.moe.d_model={self.moe.d_model} is invalid: must equal "
                             f"d_model ({self.d_model})")
        if not 0 <= self.n_dense_layers <= self.n_layers:
            raise ValueError(f"ModelShape.n_dense_layers={self.n_dense_layers} is invalid: must be in "
                             f"[0, n_layers={self.n_layers}]")
        if self.mamba is None and self.n_mamba_layers:
            raise ValueError(f"ModelShape.attn_period={self.attn_period} leaves {self.n_mamba_layers} "
                             "non-attention layers but mamba is None")

    def is_moe_layer(self, i: int) -> bool:
        return (i >= self.n_dense_layers and i % self.moe_period == self.moe_offset
                and i not in self.mlp_only_layers)

    def is_attention_layer(self, i: int) -> bool:
        return i % self.attn_period == self.attn_offset

    @property
    def n_moe_layers(self) -> int:
        return sum(self.is_moe_layer(i) for i in range(self.n_layers))

    @property
    def n_attention_layers(self) -> int:
        return sum(self.is_attention_layer(i) for i in range(self.n_layers))

    @property
    def n_mamba_layers(self) -> int:
        return self.n_layers - self.n_attention_layers


@dataclass(frozen=True)
class Published:
    """Published total / active parameters and the embedding convention that reproduces them."""

    total: float
    active: float
    active_embeddings: str  # "both", "output" or "none" (accounting.model_active_params)
    source: str


def _spec(**fields) -> LayerSpec:
    # bfloat16: the released checkpoints' dtype, so byte accounting matches a real deployment.
    # z_loss_coef 0: none of these models trains with a router z-loss except OLMoE (set there).
    return LayerSpec(dtype="bfloat16", z_loss_coef=0.0, **fields)


def _deepseek_mla(heads: int, q_lora: int | None) -> Attention:
    return Attention(n_heads=heads, n_kv_heads=heads, q_lora_rank=q_lora, kv_lora_rank=512,
                     qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128)


PRESETS: dict[str, ModelShape] = {
    "mixtral-8x7b": ModelShape(
        "mixtral-8x7b", n_layers=32, d_model=4096, vocab=32000, tie_embeddings=False,
        attention=Attention(32, 8, head_dim=128), dense_d_ff=14336,
        moe=_spec(variant="token_choice", d_model=4096, d_ff=14336, n_experts=8, top_k=2,
                  renormalize=True, aux_loss_coef=0.02)),
    "deepseek-v2": ModelShape(
        "deepseek-v2", n_layers=60, d_model=5120, vocab=102400, tie_embeddings=False,
        attention=_deepseek_mla(128, 1536), dense_d_ff=12288, n_dense_layers=1,
        moe=_spec(variant="deepseek", d_model=5120, d_ff=1536, n_experts=160, top_k=6, n_shared=2,
                  renormalize=False, routed_scaling=16.0, n_groups=8, topk_groups=3, aux_loss_coef=0.003)),
    "deepseek-v2-lite": ModelShape(
        "deepseek-v2-lite", n_layers=27, d_model=2048, vocab=102400, tie_embeddings=False,
        attention=_deepseek_mla(16, None), dense_d_ff=10944, n_dense_layers=1,
        moe=_spec(variant="deepseek", d_model=2048, d_ff=1408, n_experts=64, top_k=6, n_shared=2,
                  renormalize=False, aux_loss_coef=0.001)),
    "deepseekmoe-16b": ModelShape(
        "deepseekmoe-16b", n_layers=28, d_model=2048, vocab=102400, tie_embeddings=False,
        attention=Attention(16, 16, head_dim=128), dense_d_ff=10944, n_dense_layers=1,
        moe=_spec(variant="deepseek", d_model=2048, d_ff=1408, n_experts=64, top_k=6, n_shared=2,
                  renormalize=False, aux_loss_coef=0.001)),
    "deepseek-v3": ModelShape(
        "deepseek-v3", n_layers=61, d_model=7168, vocab=129280, tie_embeddings=False,
        attention=_deepseek_mla(128, 1536), dense_d_ff=18432, n_dense_layers=3,
        moe=_spec(variant="deepseek", d_model=7168, d_ff=2048, n_experts=256, top_k=8, n_shared=1,
                  score_func="sigmoid", renormalize=True, routed_scaling=2.5, expert_bias=True,
                  n_groups=8, topk_groups=4, aux_loss_coef=0.0001)),
    "qwen2-57b-a14b": ModelShape(
        "qwen2-57b-a14b", n_layers=28, d_model=3584, vocab=151936, tie_embeddings=False,
        attention=Attention(28, 4, head_dim=128, qkv_bias=True), dense_d_ff=18944,
        moe=_spec(variant="token_choice", d_model=3584, d_ff=2560, n_experts=64, top_k=8, n_shared=1,
                  shared_d_ff=20480, shared_gate=True, renormalize=False, aux_loss_coef=0.001)),
    "qwen1.5-moe-a2.7b": ModelShape(
        "qwen1.5-moe-a2.7b", n_layers=24, d_model=2048, vocab=151936, tie_embeddings=False,
        attention=Attention(16, 16, head_dim=128, qkv_bias=True), dense_d_ff=5632,
        moe=_spec(variant="token_choice", d_model=2048, d_ff=1408, n_experts=60, top_k=4, n_shared=1,
                  shared_d_ff=5632, shared_gate=True, renormalize=False, aux_loss_coef=0.001)),
    "olmoe-1b-7b": ModelShape(
        "olmoe-1b-7b", n_layers=16, d_model=2048, vocab=50304, tie_embeddings=False,
        attention=Attention(16, 16, head_dim=128, qk_norm=True), dense_d_ff=1024,
        moe=LayerSpec(variant="token_choice", d_model=2048, d_ff=1024, n_experts=64, top_k=8,
                      renormalize=False, aux_loss_coef=0.01, z_loss_coef=0.001, dtype="bfloat16")),
    # Jamba: attention in 1 layer of 8 (offset 4), Mamba in the rest; MoE FFN every other layer.
    "jamba-v0.1": ModelShape(
        "jamba-v0.1", n_layers=32, d_model=4096, vocab=65536, tie_embeddings=False,
        attention=Attention(32, 8, head_dim=128), dense_d_ff=14336, moe_period=2, moe_offset=1,
        attn_period=8, attn_offset=4, mamba=Mamba(d_inner=8192, d_state=16, d_conv=4, dt_rank=256),
        moe=_spec(variant="token_choice", d_model=4096, d_ff=14336, n_experts=16, top_k=2,
                  renormalize=False, aux_loss_coef=0.001)),
}

# Active-parameter conventions differ between authors: "both" counts the input embedding table and
# the LM head, "output" only the LM head (the input embedding is a row lookup). The convention below
# is the one that reproduces the published figure; DeepSeek itself is not consistent across papers.
PUBLISHED: dict[str, Published] = {
    "mixtral-8x7b": Published(46.7e9, 12.9e9, "both", "Mixtral of Experts (Jiang 2024)"),
    "deepseek-v2": Published(236e9, 21e9, "output", "DeepSeek-V2 (2024)"),
    "deepseek-v2-lite": Published(15.7e9, 2.4e9, "output", "DeepSeek-V2 (2024), appendix B"),
    "deepseekmoe-16b": Published(16.4e9, 2.8e9, "both", "DeepSeekMoE (Dai 2024)"),
    "deepseek-v3": Published(671e9, 37e9, "output", "DeepSeek-V3 (2024), main model without MTP"),
    "qwen2-57b-a14b": Published(57e9, 14e9, "both", "Qwen2 technical report (2024)"),
    "qwen1.5-moe-a2.7b": Published(14.3e9, 2.7e9, "both", "Qwen1.5-MoE blog (2024)"),
    "olmoe-1b-7b": Published(6.9e9, 1.3e9, "both", "OLMoE (Muennighoff 2024)"),
    "jamba-v0.1": Published(52e9, 12e9, "both", "Jamba (Lieber 2024)"),
}


def get_preset(name: str) -> ModelShape:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets are " + ", ".join(PRESETS))
    return PRESETS[name]


__all__ = ["PRESETS", "PUBLISHED", "Attention", "Mamba", "ModelShape", "Published", "get_preset"]
