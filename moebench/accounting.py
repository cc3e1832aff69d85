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

from moebench.kernels.peer_experts import chunk_tokens_for
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


def decode_weight_bytes(spec: LayerSpec, experts_touched: float, dtype: str | None = None) -> dict[str, float]:
    """Weight bytes one forward step must read at least once, by part, given the distinct routed experts
    its tokens touched: router (E*D), shared experts (all of them), routed experts (touched * m*D*F).

    The weight-read floor of a decode step is the sum over the streaming-read bandwidth. Dense: the
    FFN; PEER: the keys and query network, plus experts_touched singleton experts of 2*D each.
    """
    b = DTYPE_BYTES[dtype or spec.dtype]
    params = layer_params(spec)
    if spec.variant == "peer":
        return {"router": (params["query"] + params["keys"]) * b, "experts": experts_touched * 2 * spec.d_model * b,
                "shared": 0.0}
    if spec.variant == "dense":
        return {"router": 0.0, "experts": params["experts"] * b, "shared": 0.0}
    per_expert = ffn_matrices(spec.activation) * spec.d_model * spec.d_ff
    return {"router": params["router"] * b, "experts": experts_touched * per_expert * b,
            "shared": params["shared"] * b}


def weight_read_floor(flops: float, weight_bytes: float, gemm_rate: float, read_bandwidth: float) -> Roofline:
    """The decode roofline: time >= max(weight_bytes / streaming-read bandwidth, flops / dense-GEMM rate).

    Both rates are measured in the same run (moebench.measure.ceilings.read_bandwidth, gemm_ceiling);
    fraction of floor = floor / latency.
    """
    return roofline(flops, weight_bytes, gemm_rate, read_bandwidth)


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


def _ffn_activation_bytes(rows: float, d_model: int, d_ff: int, activation: str, b: int) -> float:
    """Every tensor one eager FFN allocates over `rows` inputs: the in-projection [rows, I], the
    activation ([rows, F]; swiglu also its silu(gate) temporary, alive while it multiplies by up: 2 [rows, F])
    and the out-projection [rows, D]. I = 2F for swiglu, else F (moebench.dispatch.common.ffn)."""
    I = 2 * d_ff if activation == "swiglu" else d_ff
    act = 2 * d_ff if activation == "swiglu" else d_ff
    return rows * (I + act + d_model) * b


def computed_rows(spec: LayerSpec, n_tokens: int) -> int:
    """Rows a routed layer's experts compute over T tokens: the E*C capacity slots of the padded backend
    (C = the router's capacity; dropless padding sizes C by the fullest expert, at most T tokens), else
    the A assignments (T*K; expert choice E*k with k = ceil(c*T/E) tokens per expert)."""
    T, E = n_tokens, spec.n_experts
    if spec.variant == "expert_choice":
        k = min(T, max(1, expert_capacity(spec.expert_capacity_c, T, E, 1)))
        return E * k  # padded: C = k slots per expert, all filled
    if spec.backend != "padded":
        return T * spec.top_k
    if spec.capacity_factor is None:
        return E * T
    return E * expert_capacity(spec.capacity_factor, T, E, spec.top_k, spec.min_capacity)


def layer_activation_bytes(spec: LayerSpec, n_tokens: int) -> dict[str, float]:
    """Bytes one eval-mode forward allocates beyond the weights, by part, counting every intermediate once
    as if all stayed alive together: an upper bound for the measured peak (peak_bytes) of moebench's eager
    layers, every backend and kernel choice (docs/formulas.md#bytes-ceilings-and-the-roofline). An analytic
    formula from the spec and T only. Forward only: a training step's peak also holds what autograd saves.

    b = bytes per element of spec.dtype; A = T*K assignments (expert choice: E*k); R = rows the experts
    compute (`computed_rows`: A, or the padded backend's E*C capacity slots, empty ones included);
    ffn(n) = every tensor of one FFN over n rows (`_ffn_activation_bytes`: the in-projection [n, I], the
    activation [n, F], for swiglu also silu(gate) [n, F] alive while it multiplies, the output [n, D]).
      router    [T, E]: the logits in b, at most six float32 score arrays (probs, selection scores, masks)
                and a bool mask; the assignment bookkeeping, at most 16 int64, 4 float32 and 2 bool arrays
                of A (token and expert ids, sort orders, positions under capacity)
      dispatch  the gathered rows [R, D]; padded also x with a zero row [T+1, D], the slot -> token map
                (2 int64 arrays of E*C+1), the outputs with a zero row [E*C+1, D] and their gather [A, D]
      experts   ffn(R)
      combine   the weighted rows [A, D] float32 (and their float32 copy when b < 4), the float32
                accumulator [T, D] twice (zeros, then the out-of-place index_add), the output in b when
                b < 4, the routed_scaling product
      shared    ffn(T) at width S*F_s, the sigmoid gate ([T, 1] twice and the product [T, D]), y + shared
      weight_copy  lifelong only: the [frozen; new] concatenation of all gate and expert weights that an
                expanded layer makes in every forward (moebench.layers.lifelong)
    Dense: ffn(T).
    PEER (moebench.layers.peer; A = H*k experts per token, n = n_keys, N = n^2):
      query           the projection [T, H*d_key] in b, its BatchNorm output, their float32 copy (b < 4)
      subkey_scores   all sub-key scores [T, H, 2, n] float32 (the native top-k holds 8 MiB blocks of them)
      candidate_topk  product: the halves' top-k [T, H, k] (scores, ids), the candidate sums and ids
                      [T, H, c] (c = `peer_candidate_pairs`(k); float32 and int64 with their temporaries),
                      the final top-k; brute: all N sums [T, H, N] float32 and the top-k
      gates           [T, H, k] float32
      experts         u.x [T, A] in b; torch's gather, two chunks [C, A, D] at once (C = chunk_tokens_for
                      tokens, 32 MiB a chunk); act and gated act [T, A] float32 (and the casts when b < 4);
                      embedding_bag's output [T, D] and its bag ids (2 int64 arrays of T*A)

    How tight (CPU, fp32, measured with moebench.measure.memory at the memory suite's shape, T = 2048,
    D = 512, F = 1024, E = 16, K = 2; PEER at the peer suite's T = 256): grouped_mm and padded keep every
    row alive and peak at 2/3 to 3/4 of the bound (72 of 97, 94 of 140, 148 of 206 MiB); dense at 94-99%
    (64 of 68, 512 of 516 MiB); brute-force PEER at 89-94% ([T, H, N] dominates). Backends and kernels that
    work in pieces peak far lower: loop and sort_gather hold one expert's rows at a time (10 and 7 of
    97 MiB), product PEER with the native C kernels holds score blocks and no gathered rows (18 of 169 MiB;
    109 with the torch kernels). Not counted: scratch buffers a GEMM library takes through torch's
    allocator; CPU bfloat16 matmuls take about 130 KB per call, which exceeds the bound at a few tokens
    (T <= 8 at D = 1024), never at the suites' token counts.
    """
    b = DTYPE_BYTES[spec.dtype]
    if spec.variant == "peer":
        return _peer_activation_bytes(spec, n_tokens, b)
    T, D = n_tokens, spec.d_model
    if spec.variant == "dense":
        return {"experts": _ffn_activation_bytes(T, D, spec.d_ff, spec.activation, b)}
    return _routed_activation_bytes(spec, n_tokens, b)


def _routed_activation_bytes(spec: LayerSpec, n_tokens: int, b: int) -> dict[str, float]:
    T, D, E = n_tokens, spec.d_model, spec.n_experts
    R = computed_rows(spec, T)
    # expert choice makes E*k assignments; token choice (and padded slots' sources) T*K
    A = R if spec.variant == "expert_choice" else T * spec.top_k
    widen = 0 if b == FP32 else 1  # float32 copies that a float32 layer does not need
    dispatch = R * D * b
    if spec.backend == "padded":
        dispatch += (T + 1) * D * b + 2 * (R + 1) * INDEX + (R + 1) * D * b + A * D * b
    out = {
        "router": T * E * (b + 6 * FP32 + 1) + A * (16 * INDEX + 4 * FP32 + 2),
        "dispatch": dispatch,
        "experts": _ffn_activation_bytes(R, D, spec.d_ff, spec.activation, b),
        "combine": (1 + widen) * A * D * FP32 + 2 * T * D * FP32 + widen * T * D * b
        + (T * D * b if spec.routed_scaling != 1.0 else 0),
        "shared": 0.0,
    }
    if spec.n_shared:
        width = spec.n_shared * (spec.shared_d_ff or spec.d_ff)
        gate = 2 * T * b + T * D * b if spec.shared_gate else 0
        out["shared"] = _ffn_activation_bytes(T, D, width, spec.activation, b) + gate + T * D * b
    if spec.variant == "lifelong":
        # An expanded layer concatenates its frozen and new weights in every forward. The spec does not
        # say whether it has grown, so the copy is always counted (a layer never expanded makes none).
        out["weight_copy"] = (_router_params(spec) + spec.n_experts * ffn_matrices(spec.activation) * D * spec.d_ff) * b
    return out


def _peer_activation_bytes(spec: LayerSpec, n_tokens: int, b: int) -> dict[str, float]:
    T, D, H, k, n = n_tokens, spec.d_model, spec.peer_heads, spec.peer_k, spec.peer_n_keys
    A = H * k
    widen = 0 if b == FP32 else 1
    query = T * H * spec.d_key * (b * (2 if spec.peer_query_batchnorm else 1) + widen * FP32)
    top_k = T * H * k * (FP32 + 2 * INDEX)  # the final scores and ids, and the ids' gather
    if spec.peer_retrieval == "brute":
        candidates = T * H * spec.peer_experts * FP32 + top_k
    else:
        c = peer_candidate_pairs(k)
        candidates = 2 * T * H * k * (FP32 + INDEX) + T * H * c * (3 * FP32 + 4 * INDEX) + top_k
    # Two chunks can be alive: the loop gathers the next before the previous one's name is rebound.
    gathered = min(T, 2 * chunk_tokens_for(A, D, b)) * A * D * b
    experts = T * A * b + gathered + 2 * T * A * FP32 + widen * T * A * (FP32 + b) + T * D * b + 2 * T * A * INDEX
    return {"query": query, "subkey_scores": T * H * 2 * n * FP32, "candidate_topk": candidates,
            "gates": T * H * k * FP32, "experts": experts}


def peer_candidate_pairs(k: int) -> int:
    """Rank pairs (i, j) of the two halves' top-k that product retrieval scores: (i+1)(j+1) <= k, i.e.
    sum over i of floor(k / i) (moebench.layers.peer.candidate_pairs: 50 for k = 16)."""
    return sum(k // i for i in range(1, k + 1))


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
    "DTYPE_BYTES", "Roofline", "attention_params", "capacity_report", "computed_rows", "decode_weight_bytes",
    "expected_experts_touched",
    "experts_per_token", "ffn_matrices", "krajewski_router_share", "layer_active_params", "layer_activation_bytes",
    "layer_bytes", "layer_flops_per_token", "layer_params", "layer_roofline", "mamba_params", "model_active_params",
    "model_flops_per_token", "model_params", "model_summary", "peer_candidate_pairs", "roofline",
    "weight_read_floor",
]
