"""Analytic accounting: parameters, FLOPs and bytes of one MoE layer, and of whole models.

Conventions (every number in this module follows them):
- FLOPs: a multiply-add is 2 FLOPs, and only matrix products count. Not counted: activations,
  softmax/sigmoid, norms, top-k comparisons, the sigmoid shared gate's multiply. Counted exceptions,
  named where they occur: the combine (K weighted adds of D-vectors: 2*K*D per token), PEER's candidate
  sums (1 FLOP per add), Sinkhorn normalisation (4*E per token per iteration).
- Forward only, eval mode unless `training=True`: noisy gating's noise matmul (2*D*E) and Sinkhorn
  balancing (4*E per iteration) run in training only, as the layers do. Forward + backward ~ 3x.
- FLOPs per token assume every assignment is computed (dropless; with a capacity factor an upper
  bound): expected drops are reported by `capacity_report`.
- Experts: swiglu has 3 D*F matrices (gate, up, down), gelu/relu 2. No biases.
- Experts per token K_eff: top_k; expert choice c (each expert takes C = ceil(c*T/E) of the T tokens,
  so a token uses c experts on average, a float); GShard's second expert counted as always used
  (eval keeps it; in training it is wanted with probability 2*g2, which depends on the router); dense 1.
- Parameters are weights only: buffers (BatchNorm running stats, DeepSeek-V3's selection bias, which
  transformers also keeps as a buffer) are not parameters. Router: E*D (hash: none; noisy: 2*E*D).
- PEER: the H heads share one set of product keys (the paper; layers/peer.py default): 2*n_keys*d_key/2
  key weights; the query BatchNorm adds 2*H*d_key weights.
- Bytes: an unfused eager implementation where each op reads its inputs and writes its outputs once
  (see `layer_bytes`). Router logits and scores are float32 (the layers compute them in float32).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from moebench.presets import Attention, Mamba, ModelShape
from moebench.routing.capacity import expected_drop_fraction_uniform, expert_capacity
from moebench.spec import LayerSpec

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
FP32, INDEX = 4, 8  # router scores in float32, indices int64


# --- one layer ------------------------------------------------------------------------------------

def ffn_matrices(activation: str) -> int:
    """Number of D*F matrices in one FFN: swiglu 3 (gate, up, down), gelu/relu 2 (up, down)."""
    return 3 if activation == "swiglu" else 2


def experts_per_token(spec: LayerSpec) -> float:
    """K_eff: top_k; expert choice c on average; dense 1; PEER H*k retrieved singleton experts."""
    if spec.variant == "dense":
        return 1
    if spec.variant == "peer":
        return spec.peer_heads * spec.peer_k
    if spec.variant == "expert_choice":
        return spec.expert_capacity_c
    return spec.top_k


def _router_params(spec: LayerSpec) -> int:
    if spec.variant == "hash":
        return 0  # a fixed hash of the token id, nothing learned
    return spec.n_experts * spec.d_model * (2 if spec.noisy_gating else 1)


def _shared_params(spec: LayerSpec) -> int:
    if not spec.n_shared:
        return 0
    width = spec.shared_d_ff or spec.d_ff
    gate = spec.d_model if spec.shared_gate else 0  # Qwen2-MoE sigmoid(x . w) on the shared output
    return spec.n_shared * ffn_matrices(spec.activation) * spec.d_model * width + gate


def layer_params(spec: LayerSpec) -> dict[str, int]:
    """Total parameters by part. Routed: router, experts, shared. PEER: query, keys, experts (u and v)."""
    D = spec.d_model
    if spec.variant == "peer":
        bn = 2 * spec.peer_heads * spec.d_key if spec.peer_query_batchnorm else 0
        return {"query": D * spec.peer_heads * spec.d_key + bn,
                "keys": 2 * spec.peer_n_keys * (spec.d_key // 2),
                "experts": 2 * spec.peer_experts * D}
    expert = ffn_matrices(spec.activation) * D * spec.d_ff
    if spec.variant == "dense":
        return {"router": 0, "experts": expert, "shared": 0}
    return {"router": _router_params(spec), "experts": spec.n_experts * expert, "shared": _shared_params(spec)}


def layer_active_params(spec: LayerSpec) -> dict[str, float]:
    """Parameters one token uses, by part: the whole router and shared experts, K_eff routed experts.

    PEER: the whole query network and all product keys (every token scores all 2*n_keys sub-keys), and
    H*k singleton experts of 2*D weights each.
    """
    total = layer_params(spec)
    if spec.variant == "peer":
        return {"query": total["query"], "keys": total["keys"],
                "experts": experts_per_token(spec) * 2 * spec.d_model}
    per_expert = ffn_matrices(spec.activation) * spec.d_model * spec.d_ff
    return {"router": total["router"], "experts": experts_per_token(spec) * per_expert, "shared": total["shared"]}


def layer_flops_per_token(spec: LayerSpec, training: bool = False) -> dict[str, float]:
    """Forward FLOPs per token by phase (module conventions).

    Routed: router 2*D*E (training: + 2*D*E noise matmul if noisy_gating, + 4*E*sinkhorn_iters for
    Sinkhorn; hash: 0), dispatch 0 (a copy), experts K_eff * 2*m*D*F with m
    matrices, combine 2*K_eff*D, shared S * 2*m*D*F_s (+ 2*D for the Qwen2 gate). Dense: experts 2*m*D*F.
    PEER: query 2*D*H*d_key; subkey_scores 2*H*n_keys*d_key (two halves of n_keys keys, d_key/2 each);
    candidate_topk H*k^2 adds (product) or H*N adds (brute: all N sums); experts H*k*4*D (u.x and the
    scaled add of v, 2*D each).
    """
    D, m = spec.d_model, ffn_matrices(spec.activation)
    if spec.variant == "peer":
        H, k, R = spec.peer_heads, spec.peer_k, spec.peer_n_keys
        candidates = H * (k * k if spec.peer_retrieval == "product" else spec.peer_experts)
        return {"query": 2 * D * H * spec.d_key, "subkey_scores": 2 * H * R * spec.d_key,
                "candidate_topk": candidates, "experts": H * k * 4 * D}
    if spec.variant == "dense":
        return {"router": 0, "dispatch": 0, "experts": 2 * m * D * spec.d_ff, "combine": 0, "shared": 0}
    K = experts_per_token(spec)
    router = 0 if spec.variant == "hash" else 2 * D * spec.n_experts
    if training and spec.noisy_gating:
        router += 2 * D * spec.n_experts
    if training and spec.variant == "sinkhorn":
        router += 4 * spec.n_experts * spec.sinkhorn_iters
    shared = 0
    if spec.n_shared:
        shared = 2 * m * D * spec.n_shared * (spec.shared_d_ff or spec.d_ff) + (2 * D if spec.shared_gate else 0)
    return {"router": router, "dispatch": 0, "experts": K * 2 * m * D * spec.d_ff, "combine": 2 * K * D,
            "shared": shared}


def layer_computed_flops(spec: LayerSpec, n_tokens: int, expert_rows: float, training: bool = False) -> float:
    """FLOPs of the work that really ran in one step: layer_flops_per_token over the step, with the
    experts' part counted over the `expert_rows` rows the experts multiplied instead of T*K_eff.

    `flops` stays the useful work (every assignment computed once); this differs where a capacity
    drops assignments (fewer rows: kept assignments only) or a padded backend computes E*C slots,
    empty ones included (more rows). frac_of_ceiling divides this work, not the useful work, by the
    latency: a layer that drops a third of its assignments must not read as beating the GEMM ceiling.
    Dense and PEER layers compute what they count: their `flops`.
    """
    per_token = layer_flops_per_token(spec, training=training)
    forward = sum(per_token.values()) * n_tokens
    if spec.is_routed and spec.variant != "peer":
        per_row = per_token["experts"] / experts_per_token(spec)
        forward += (expert_rows - n_tokens * experts_per_token(spec)) * per_row
    return forward * (3 if training else 1)  # backward ~ 2x forward, as `flops`


def expected_experts_touched(n_experts: int, n_tokens: int, per_token: float) -> float:
    """Distinct experts hit by T tokens routing uniformly: E * (1 - (1 - K/E)^T).

    Treats a token's K picks as independent draws of probability K/E each (exact for K = 1, close for
    K << E): an expert is missed by one token with probability 1 - K/E.
    """
    p = min(1.0, per_token / n_experts)
    return n_experts * (1 - (1 - p) ** n_tokens)


def layer_bytes(spec: LayerSpec, n_tokens: int, dtype: str | None = None) -> dict[str, float]:
    """Bytes moved by one forward over T tokens, by term, for an unfused eager implementation.

    b = bytes per element of `dtype` (default spec.dtype); scores float32, indices int64; A = T*K_eff
    assignments, all computed (with a capacity factor an upper bound; the padded backend computes E*C
    slots instead).
      router_weights  E*D*b                      router_io  read x, write + read logits [T,E], write idx+weight [A]
                                                 (hash: only the expert ids [A] are written)
      dispatch        read and write A*D*b       (gather: K copies of x into expert order)
      expert_weights  E_hit * m*D*F*b            E_hit = expected distinct experts under uniform routing
      expert_io       A*(D + I + I + F + F + D)*b  in-proj reads x, writes I; activation reads I, writes F;
                                                 out-proj reads F, writes D (I = 2F swiglu, else F)
      combine         read A*D*b + A weights, write T*D*b  (scatter-add: K copies back into y)
      shared_weights / shared_io  as one FFN of width S*F_s over all T tokens, plus reading y to add it.
    PEER: query (weights, x in, q out float32), keys, subkey_scores ([T,H,2,n_keys] float32 out),
      candidate_topk (reads scores; brute also writes and reads [T,H,N]), expert_weights
      T*H*k*2*D*b (u and v rows gathered per token, no reuse assumed: the memory floor in docs/formulas.md#peer),
      expert_io (the gathered copies written and read again, x in, y out).
    """
    T = n_tokens
    b = DTYPE_BYTES[dtype or spec.dtype]
    D, F = spec.d_model, spec.d_ff
    if spec.variant == "peer":
        H, k, R, dk, N = spec.peer_heads, spec.peer_k, spec.peer_n_keys, spec.d_key, spec.peer_experts
        gathered = T * H * k * 2 * D * b
        brute = 2 * T * H * N * FP32 if spec.peer_retrieval == "brute" else 0
        return {
            "query": D * H * dk * b + T * D * b + T * H * dk * FP32,
            "keys": R * dk * b,
            "subkey_scores": T * H * dk * FP32 + T * H * 2 * R * FP32,
            "candidate_topk": T * H * 2 * R * FP32 + brute + T * H * k * (FP32 + INDEX),
            "expert_weights": gathered,
            "expert_io": 2 * gathered + T * D * b + T * D * b,
        }
    m = ffn_matrices(spec.activation)
    I = 2 * F if spec.activation == "swiglu" else F
    if spec.variant == "dense":
        return {"expert_weights": m * D * F * b, "expert_io": T * (D + I + I + F + F + D) * b}
    E, K = spec.n_experts, experts_per_token(spec)
    A = T * K
    out = {
        "router_weights": _router_params(spec) * b,
        "router_io": (T * D * b + 2 * T * E * FP32 + A * (FP32 + INDEX)) if spec.variant != "hash" else A * INDEX,
        "dispatch": 2 * A * D * b,
        "expert_weights": expected_experts_touched(E, T, K) * m * D * F * b,
        "expert_io": A * (D + I + I + F + F + D) * b,
        "combine": A * D * b + A * FP32 + T * D * b,
        "shared_weights": _shared_params(spec) * b,
        "shared_io": 0.0,
    }
    if spec.n_shared:
        Fs = spec.n_shared * (spec.shared_d_ff or F)
        Is = 2 * Fs if spec.activation == "swiglu" else Fs
        out["shared_io"] = T * (D + Is + Is + Fs + Fs + D) * b + 3 * T * D * b  # + read y, shared; write y
    return out


def layer_activation_bytes(spec: LayerSpec, n_tokens: int) -> dict[str, float]:
    """Bytes a forward allocates beyond the weights, by part, if every intermediate stayed alive at
    once: an upper bound for the peak of an unfused eager implementation (backends that free each
    expert's intermediates before the next one peak lower). Compare with a measured peak_bytes.

      router    logits and scores [T, E] in float32, selected indices and weights [A]
      dispatch  the gathered copy of x in expert order [A, D] and the expert outputs [A, D]
      experts   the in-projection [A, I] and activation [A, F]
      combine   the weighted outputs and the float32 accumulator: [A, D] + [T, D] float32
    PEER: queries, sub-key scores [T, H, 2, n_keys] float32, gathered u and v rows [T, H, k, D].
    """
    T = n_tokens
    b = DTYPE_BYTES[spec.dtype]
    D, F = spec.d_model, spec.d_ff
    if spec.variant == "peer":
        H, k = spec.peer_heads, spec.peer_k
        return {"query": T * H * spec.d_key * FP32, "subkey_scores": T * H * 2 * spec.peer_n_keys * FP32,
                "gathered_experts": 2 * T * H * k * D * b, "output": T * D * b}
    I = 2 * F if spec.activation == "swiglu" else F
    if spec.variant == "dense":
        return {"experts": T * (I + F) * b, "output": T * D * b}
    A = T * experts_per_token(spec)
    return {"router": 2 * T * spec.n_experts * FP32 + A * (FP32 + INDEX),
            "dispatch": 2 * A * D * b, "experts": A * (I + F) * b, "combine": A * D * FP32 + T * D * FP32}


def capacity_report(spec: LayerSpec, n_tokens: int) -> dict[str, float | int | str | None]:
    """Capacity per expert and the drops uniform routing predicts (moebench.routing.capacity).

    Token choice and friends: C = ceil(CF*T*K/E) floored at min_capacity; expected dropped fraction of
    the T*K assignments under uniform routing (trained routers drop more: docs/formulas.md#capacity-and-drops).
    GShard's random second-expert policy and group-limited routing are ignored by this approximation.
    Expert choice: C = ceil(c*T/E) tokens per expert, nothing dropped; if each expert's picks were
    uniform and independent, a token is left with no expert with probability (1 - C/T)^E.
    Dropless, dense and PEER: capacity None, nothing dropped.
    """
    T = n_tokens
    if spec.variant == "expert_choice":
        C = expert_capacity(spec.expert_capacity_c, T, spec.n_experts, 1)
        return {"rule": "ceil(c*T/E)", "capacity": C, "expected_drop_fraction": 0.0,
                "expected_tokens_without_expert": (1 - min(C, T) / T) ** spec.n_experts,
                "computed_assignments": spec.n_experts * min(C, T)}
    K = experts_per_token(spec)
    if not spec.is_routed or spec.capacity_factor is None:
        return {"rule": "dropless", "capacity": None, "expected_drop_fraction": 0.0,
                "expected_tokens_without_expert": 0.0, "computed_assignments": T * K}
    E = spec.n_experts
    C = expert_capacity(spec.capacity_factor, T, E, spec.top_k, spec.min_capacity)
    drop = expected_drop_fraction_uniform(T, E, spec.top_k, spec.capacity_factor, spec.min_capacity)
    return {"rule": "ceil(CF*T*K/E), at least min_capacity", "capacity": C, "expected_drop_fraction": drop,
            "expected_tokens_without_expert": None, "computed_assignments": T * K * (1 - drop)}


def krajewski_router_share(d_model: int, n_experts: int, granularity: int, c_f: float = 6,
                           c_r: float = 14) -> float:
    """Krajewski et al. 2024: routing's share of the FLOPs of a block, E*G*c_r / (12*D*c_f + E*G*c_r).

    Their per-token block cost is 12*D^2*c_f (attention + FFN, c_f = 6 training FLOPs per parameter) plus
    D*E*G*c_r for routing (c_r = 14); the common factor D cancels.
    """
    routing = n_experts * granularity * c_r
    return routing / (12 * d_model * c_f + routing)


@dataclass(frozen=True)
class Roofline:
    """Lower bound on time: time >= max(flops / peak_flops, bytes / bandwidth)."""

    flops: float
    bytes_moved: float
    compute_s: float
    memory_s: float

    @property
    def time_s(self) -> float:
        return max(self.compute_s, self.memory_s)

    @property
    def bound(self) -> str:
        return "compute" if self.compute_s >= self.memory_s else "memory"

    @property
    def intensity(self) -> float:
        """Arithmetic intensity, FLOPs per byte."""
        return self.flops / self.bytes_moved if self.bytes_moved else math.inf


def roofline(flops: float, bytes_moved: float, peak_flops: float, bandwidth: float) -> Roofline:
    """peak_flops in FLOP/s, bandwidth in bytes/s."""
    if peak_flops <= 0 or bandwidth <= 0:
        raise ValueError(f"roofline needs peak_flops > 0 and bandwidth > 0, got {peak_flops}, {bandwidth}")
    return Roofline(flops, bytes_moved, flops / peak_flops, bytes_moved / bandwidth)


def layer_roofline(spec: LayerSpec, n_tokens: int, peak_flops: float, bandwidth: float) -> Roofline:
    flops = n_tokens * sum(layer_flops_per_token(spec).values())
    return roofline(flops, sum(layer_bytes(spec, n_tokens).values()), peak_flops, bandwidth)


# --- whole models ---------------------------------------------------------------------------------

def attention_params(att: Attention, d_model: int) -> int:
    """Projection weights (+ Qwen2 qkv bias, OLMoE q/k norms, MLA's two low-rank norms)."""
    D, H = d_model, att.n_heads
    if att.is_mla:
        qk = att.qk_nope_head_dim + att.qk_rope_head_dim
        if att.q_lora_rank is None:
            q = D * H * qk
        else:
            q = D * att.q_lora_rank + att.q_lora_rank + att.q_lora_rank * H * qk
        kv = D * (att.kv_lora_rank + att.qk_rope_head_dim) + att.kv_lora_rank
        kv += att.kv_lora_rank * H * (att.qk_nope_head_dim + att.v_head_dim)
        return q + kv + H * att.v_head_dim * D
    q, kv = H * att.head_dim, att.n_kv_heads * att.head_dim
    n = D * q + 2 * D * kv + q * D
    n += (q + 2 * kv) if att.qkv_bias else 0
    n += (q + kv) if att.qk_norm else 0
    return n


def attention_flops_per_token(att: Attention, d_model: int, context_len: int) -> dict[str, float]:
    """Projections 2 * (matrix weights); scores q.k and p.v over context_len keys: 2*H*(d_qk + d_v)*ctx.

    MLA is counted in its unabsorbed form (training / prefill: k and v up-projected from the latent);
    decode kernels that absorb W_kvb into q and o trade these projections for latent-space scores.
    """
    proj = attention_params(att, d_model)
    if att.is_mla:
        norms = (att.q_lora_rank or 0) + att.kv_lora_rank
        d_qk, d_v = att.qk_nope_head_dim + att.qk_rope_head_dim, att.v_head_dim
    else:
        q, kv = att.n_heads * att.head_dim, att.n_kv_heads * att.head_dim
        norms = ((q + 2 * kv) if att.qkv_bias else 0) + ((q + kv) if att.qk_norm else 0)
        d_qk = d_v = att.head_dim
    return {"attention": 2 * (proj - norms), "attention_scores": 2 * att.n_heads * (d_qk + d_v) * context_len}


def mamba_params(mb: Mamba, d_model: int) -> int:
    """transformers JambaMambaMixer: in_proj, depthwise conv, x_proj, dt_proj (+bias), A_log, D, out_proj."""
    Di, S, R = mb.d_inner, mb.d_state, mb.dt_rank
    n = d_model * 2 * Di + (2 * Di if mb.proj_bias else 0)  # in_proj -> x and z
    n += Di * mb.d_conv + (Di if mb.conv_bias else 0)
    n += Di * (R + 2 * S)  # x_proj -> dt, B, C
    n += R * Di + Di  # dt_proj with bias
    n += Di * S + Di  # A_log, D
    n += Di * d_model + (d_model if mb.proj_bias else 0)
    n += (R + 2 * S) if mb.inner_norms else 0
    return n


def mamba_flops_per_token(mb: Mamba, d_model: int) -> float:
    """Projections 2*weights, depthwise conv 2*d_inner*d_conv, selective scan ~6*d_inner*d_state (approx.)."""
    Di, S, R = mb.d_inner, mb.d_state, mb.dt_rank
    proj = d_model * 2 * Di + Di * (R + 2 * S) + R * Di + Di * d_model
    return 2 * proj + 2 * Di * mb.d_conv + 6 * Di * S


def _dense_ffn(shape: ModelShape) -> int:
    return ffn_matrices(shape.dense_activation) * shape.d_model * shape.dense_d_ff


def model_params(shape: ModelShape) -> dict[str, int]:
    """Total parameters by part. lm_head is 0 when embeddings are tied. norms: 2 per layer + final."""
    moe = layer_params(shape.moe)
    n_moe = shape.n_moe_layers
    D = shape.d_model
    parts = {
        "embedding": shape.vocab * D,
        "lm_head": 0 if shape.tie_embeddings else shape.vocab * D,
        "attention": shape.n_attention_layers * attention_params(shape.attention, D),
        "mamba": shape.n_mamba_layers * mamba_params(shape.mamba, D) if shape.mamba else 0,
        "dense_ffn": (shape.n_layers - n_moe) * _dense_ffn(shape),
        "norms": (2 * shape.n_layers + 1) * D,
    }
    for part, n in moe.items():
        parts["moe_" + part] = n_moe * n
    return parts


def model_active_params(shape: ModelShape, embeddings: str = "both") -> dict[str, float]:
    """Parameters one token uses, by part.

    embeddings: "both" counts the input embedding table and the LM head in full (Mixtral, Qwen, OLMoE,
    DeepSeekMoE report this way); "output" counts the LM head only, the input embedding being a row
    lookup (reproduces DeepSeek-V2/V3's figures); "none" is the non-embedding active count. Tied
    embeddings count once under "both" and "output".
    """
    if embeddings not in ("both", "output", "none"):
        raise ValueError(f"embeddings={embeddings!r} is invalid: allowed values are both, output, none")
    parts: dict[str, float] = dict(model_params(shape))
    n_moe = shape.n_moe_layers
    for part, n in layer_active_params(shape.moe).items():
        parts["moe_" + part] = n_moe * n
    head = parts["embedding"] if shape.tie_embeddings else parts["lm_head"]
    parts["embedding"] = parts["embedding"] if embeddings == "both" and not shape.tie_embeddings else 0
    parts["lm_head"] = head if embeddings != "none" else 0
    return parts


def model_flops_per_token(shape: ModelShape, context_len: int = 0) -> dict[str, float]:
    """Forward FLOPs per token by phase, summed over layers; the embedding lookup is 0.

    attention_scores needs a context length (keys attended to); 0 leaves it out. MoE phases are those of
    `layer_flops_per_token` times the number of MoE layers, prefixed moe_.
    """
    D = shape.d_model
    att = attention_flops_per_token(shape.attention, D, context_len)
    parts: dict[str, float] = {
        "attention": shape.n_attention_layers * att["attention"],
        "attention_scores": shape.n_attention_layers * att["attention_scores"],
        "mamba": shape.n_mamba_layers * mamba_flops_per_token(shape.mamba, D) if shape.mamba else 0,
        "dense_ffn": (shape.n_layers - shape.n_moe_layers) * 2 * _dense_ffn(shape),
    }
    for phase, f in layer_flops_per_token(shape.moe).items():
        parts["moe_" + phase] = shape.n_moe_layers * f
    parts["lm_head"] = 2 * shape.vocab * D
    return parts


def model_summary(shape: ModelShape, embeddings: str = "both", context_len: int = 0) -> dict:
    """Plain-data summary for `moebench params` (and its --json): params, FLOPs per token, layer layout."""
    total, active = model_params(shape), model_active_params(shape, embeddings)
    flops = model_flops_per_token(shape, context_len)
    return {
        "model": shape.name,
        "params": {"total": sum(total.values()), "active": sum(active.values()), "embeddings": embeddings,
                   "total_by_part": total, "active_by_part": active},
        "flops_per_token": {"forward": sum(flops.values()), "context_len": context_len, "by_phase": flops},
        "layers": {"total": shape.n_layers, "moe": shape.n_moe_layers, "dense_ffn": shape.n_layers - shape.n_moe_layers,
                   "attention": shape.n_attention_layers, "mamba": shape.n_mamba_layers},
        "moe_layer": shape.moe.to_dict(),
    }


__all__ = [
    "DTYPE_BYTES", "Roofline", "attention_params", "capacity_report", "expected_experts_touched",
    "experts_per_token", "ffn_matrices", "krajewski_router_share", "layer_active_params", "layer_bytes",
    "layer_flops_per_token", "layer_params", "layer_roofline", "mamba_params", "model_active_params",
    "model_flops_per_token", "model_params", "model_summary", "roofline",
]
