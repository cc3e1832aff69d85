"""LayerSpec: the frozen, validated description of one MoE layer.

Vocabulary (docs/architecture.md#vocabulary): D model dim, F expert hidden dim, E routed experts, K experts per token,
S shared experts, G granularity, CF capacity factor, N PEER experts (= n_keys**2), H PEER heads.

A spec is validated once, at construction: every invalid value raises ValueError naming the field
and what is allowed. Layers trust a spec and never re-check it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

# Names are listed here (not discovered) so a spec can be validated without importing torch
# modules; moebench.layers.VARIANTS and moebench.dispatch.BACKENDS map the same names to code.
VARIANTS = (
    "dense",  # plain FFN of width F (baseline; E, K ignored)
    "token_choice",  # Mixtral top-k / Switch top-1 / Shazeer noisy top-k, softmax or sigmoid scores
    "gshard",  # GShard top-2: random second-expert policy, first choices fill buffers first
    "expert_choice",  # Zhou 2022: every expert takes its top T*c/E tokens
    "hash",  # Roller 2021: expert = fixed hash of the token id
    "sinkhorn",  # Clark 2022 S-BASE: Sinkhorn-balanced top-1
    "rl",  # Clark 2022 RL-R: top-1 sampled from the router, REINFORCE
    "deepseek",  # DeepSeekMoE / V2 / V3: shared + fine-grained routed experts
    "peer",  # He 2024: product-key retrieval over N singleton experts
    "lifelong",  # Chen 2023: expandable experts, old experts and gate rows frozen
)
ROUTED_VARIANTS = tuple(v for v in VARIANTS if v not in ("dense", "peer"))
BACKEND_NAMES = ("loop", "sort_gather", "grouped_mm", "padded", "triton")
ACTIVATIONS = ("swiglu", "gelu", "relu")
DTYPES = ("float32", "bfloat16", "float16")
DROP_POLICIES = ("position", "probs")
SCORE_FUNCS = ("softmax", "sigmoid")
PEER_RETRIEVALS = ("product", "brute")
PEER_SCORE_FUNCS = ("softmax", "relu")


def _fail(field: str, value: Any, allowed: str) -> None:
    raise ValueError(f"LayerSpec.{field}={value!r} is invalid: {allowed}")


def _choice(field: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        _fail(field, value, "allowed values are " + ", ".join(allowed))


def _is_int(value: Any) -> bool:
    # bool is an int subclass in Python, but `top_k: true` in a suite file is a mistake, not 1
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """An int or a finite float: NaN slips through every `<` check, inf through every size."""
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))


def _positive_int(field: str, value: Any) -> None:
    if not _is_int(value) or value < 1:
        _fail(field, value, "must be a positive integer")


def _nonnegative_int(field: str, value: Any) -> None:
    if not _is_int(value) or value < 0:
        _fail(field, value, "must be an integer >= 0")


def _nonnegative_float(field: str, value: Any) -> None:
    if not _is_number(value) or value < 0:
        _fail(field, value, "must be a finite number >= 0")


def _flag(field: str, value: Any) -> None:
    if not isinstance(value, bool):
        _fail(field, value, "must be true or false")


@dataclass(frozen=True)
class LayerSpec:
    """One MoE layer. Defaults describe a small Mixtral-style top-2 layer."""

    variant: str = "token_choice"
    d_model: int = 256  # D
    d_ff: int = 512  # F, hidden width of one routed expert
    n_experts: int = 8  # E
    top_k: int = 2  # K
    n_shared: int = 0  # S shared experts, each of width shared_d_ff
    shared_d_ff: int | None = None  # width of one shared expert; None = d_ff
    shared_gate: bool = False  # Qwen2-MoE: shared output scaled by sigmoid(x . w_shared_gate)
    capacity_factor: float | None = None  # CF; None = dropless
    drop_policy: str = "position"  # which assignments a full expert refuses: first come or lowest score
    min_capacity: int = 0  # floor on the per-expert capacity (Mesh-TF 4, DeepSpeed 8)

    # router
    score_func: str = "softmax"
    renormalize: bool = True  # divide the kept top-K scores by their sum (Mixtral) or not (DeepSeek V2)
    routed_scaling: float = 1.0  # DeepSeek routed_scaling_factor multiplies the routed output
    noisy_gating: bool = False  # Shazeer 2017 tunable Gaussian noise (training only)
    jitter: float = 0.0  # Switch input jitter: x *= U(1-eps, 1+eps) in training
    expert_bias: bool = False  # DeepSeek-V3: per-expert bias used for selection only
    bias_update_rate: float = 0.001  # gamma of the V3 bias update
    n_groups: int = 1  # group-limited routing: experts split into n_groups groups
    topk_groups: int = 1  # ... and each token may use experts of topk_groups groups only
    aux_loss_coef: float = 0.01  # Switch load-balance alpha
    z_loss_coef: float = 0.001  # ST-MoE router z-loss
    expert_capacity_c: float = 2.0  # expert choice: each expert takes T*c/E tokens
    sinkhorn_iters: int = 8
    hash_seed: int = 0

    activation: str | None = None  # None: swiglu, or gelu for PEER (whose singleton experts have no gate)
    backend: str = "sort_gather"
    dtype: str = "float32"

    # PEER: N = peer_experts singleton experts, H heads, k retrieved per head, query dim d_key
    peer_experts: int = 1024**2
    peer_heads: int = 8
    peer_k: int = 16
    d_key: int = 128
    peer_query_batchnorm: bool = True
    peer_retrieval: str = "product"
    peer_score: str = "softmax"  # softmax over the k retrieved scores (paper) or relu (non-competing)

    # lifelong: expand(n_new) adds experts; distillation weight toward the previous model's output
    lifelong_distill: float = 0.0

    def __post_init__(self) -> None:
        _choice("variant", self.variant, VARIANTS)
        if self.activation is None:  # frozen: the default is resolved once, here
            object.__setattr__(self, "activation", "gelu" if self.variant == "peer" else "swiglu")
        for name in ("d_model", "d_ff", "n_experts", "top_k", "sinkhorn_iters", "n_groups",
                     "topk_groups", "peer_experts", "peer_heads", "peer_k", "d_key"):
            _positive_int(name, getattr(self, name))
        for name in ("n_shared", "min_capacity", "hash_seed"):
            _nonnegative_int(name, getattr(self, name))
        for name in ("shared_gate", "renormalize", "noisy_gating", "expert_bias", "peer_query_batchnorm"):
            _flag(name, getattr(self, name))
        if self.shared_d_ff is not None:
            _positive_int("shared_d_ff", self.shared_d_ff)
        if self.top_k > self.n_experts:
            _fail("top_k", self.top_k, f"must be <= n_experts ({self.n_experts})")
        if self.capacity_factor is not None:
            if not _is_number(self.capacity_factor) or self.capacity_factor <= 0:
                _fail("capacity_factor", self.capacity_factor, "must be a finite number > 0, or None for dropless")
        _choice("drop_policy", self.drop_policy, DROP_POLICIES)
        _choice("score_func", self.score_func, SCORE_FUNCS)
        _choice("activation", self.activation, ACTIVATIONS)
        _choice("backend", self.backend, BACKEND_NAMES)
        _choice("dtype", self.dtype, DTYPES)
        _choice("peer_retrieval", self.peer_retrieval, PEER_RETRIEVALS)
        _choice("peer_score", self.peer_score, PEER_SCORE_FUNCS)
        for name in ("jitter", "aux_loss_coef", "z_loss_coef", "bias_update_rate", "lifelong_distill",
                     "routed_scaling", "expert_capacity_c"):
            _nonnegative_float(name, getattr(self, name))
        if self.expert_capacity_c == 0:
            _fail("expert_capacity_c", 0, "must be > 0")
        if self.n_experts % self.n_groups:
            _fail("n_groups", self.n_groups, f"must divide n_experts ({self.n_experts})")
        if self.topk_groups > self.n_groups:
            _fail("topk_groups", self.topk_groups, f"must be <= n_groups ({self.n_groups})")
        if self.n_groups > 1 and self.top_k > self.topk_groups * (self.n_experts // self.n_groups):
            _fail("top_k", self.top_k, "must fit in the experts of topk_groups groups")
        if self.variant == "peer":
            if self.activation == "swiglu":
                _fail("activation", "swiglu", "PEER's singleton experts allow gelu, relu")
            n_keys = math.isqrt(self.peer_experts)
            if n_keys * n_keys != self.peer_experts:
                _fail("peer_experts", self.peer_experts, "must be a perfect square (N = n_keys**2)")
            if self.d_key % 2:
                _fail("d_key", self.d_key, "must be even (the query splits in two halves)")
            if self.peer_k > n_keys and self.peer_retrieval == "product":
                _fail("peer_k", self.peer_k, f"must be <= n_keys ({n_keys}) for product-key retrieval")
        if self.variant in ("sinkhorn", "rl") and self.top_k != 1:
            _fail("top_k", self.top_k, f"variant {self.variant!r} routes each token to one expert (top_k=1)")
        if self.variant == "gshard" and self.top_k != 2:
            _fail("top_k", self.top_k, "variant 'gshard' is top-2 (top_k=2)")
        if self.variant in ("hash", "expert_choice", "lifelong") and self.noisy_gating:
            _fail("noisy_gating", True, f"variant {self.variant!r} has no top-k gate to add noise to")

    # --- derived values ---------------------------------------------------------------------

    @property
    def peer_n_keys(self) -> int:
        return math.isqrt(self.peer_experts)

    @property
    def is_routed(self) -> bool:
        return self.variant in ROUTED_VARIANTS

    def replace(self, **changes: Any) -> "LayerSpec":
        """A copy with some fields changed, validated again."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"LayerSpec has no field {unknown[0]!r}; fields are "
                             + ", ".join(f.name for f in dataclasses.fields(self)))
        return dataclasses.replace(self, **changes)

    def with_granularity(self, G: int) -> "LayerSpec":
        """Krajewski et al. 2024: E*G experts of width F/G, top K*G.

        Active and total expert parameters stay the same; the router grows to D*E*G. Shared experts
        (if any) are left untouched.
        """
        if not isinstance(G, int) or isinstance(G, bool) or G < 1:
            _fail("granularity", G, "must be a positive integer")
        if self.d_ff % G:
            _fail("d_ff", self.d_ff, f"must be divisible by granularity G={G}")
        return self.replace(n_experts=self.n_experts * G, d_ff=self.d_ff // G, top_k=self.top_k * G)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LayerSpec":
        """Build from plain data (suite files, JSON); unknown keys are an error, not ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"LayerSpec has no field {unknown[0]!r}; fields are " + ", ".join(sorted(names)))
        return cls(**data)

