"""Synthetic routing distributions: realistic, controlled routing for benchmarks.

A random router routes almost uniformly; trained routers do not (Huang et al. 2023: expert activation
is highly imbalanced). A distribution draws the routing decision directly:

    dist = make_distribution("zipf", seed=0, alpha=1.2)
    idx_TK = dist.sample(T, E, K, step)     # int64 [T, K], K distinct experts per token

Every draw is a pure function of (seed, step): the same seed replays exactly, each step differs.
Draws are made on the CPU (CUDA generators differ) and moved to `device` afterwards; make them
outside the timed region. Popular experts have low indices: for zipf and khot, expert e has rank e+1.

Load share. Under zipf and dirichlet the popularity p_e IS the expected share of assignments expert e
receives: each token takes K distinct experts by systematic sampling (Madow 1949) over a fresh random
order of the experts, which includes expert e with probability exactly pi_e = K*p_e. (Gumbel-top-k
on log p would give K distinct experts too, but for K > 1 it flattens the shares toward uniform, so
p_e would not be the load.) An expert cannot be chosen twice by one token, so when K*p_e > 1 its
pi_e is capped at 1 and the excess is spread over the others in proportion to p (`inclusion_probs`).

To keep a real router's computation (and cost) while imposing the routing, add
`forcing_logits(idx_TK, E)` to its fp32 logits: top-K then selects exactly idx_TK.
Axis legend: T tokens, E experts, K experts per token, A assignments (rows of a trace).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

# Added to the chosen experts' logits. Router logits are O(10) at most, so chosen experts beat the
# others by ~1e4 - 20 whatever the router says. Not larger: in fp32 the spacing of floats near 1e4 is
# 2**-10 ~ 1e-3, so the real logits survive the addition to ~3 decimals and softmax over the chosen
# experts (max-subtracted) still equals softmax over their real logits, i.e. the renormalised top-K
# weights a real router would give; at 1e6 the spacing would already be 0.06. In bf16 the spacing near
# 1e4 is 64: selection still works but the weights are destroyed, so add this to fp32 logits (the
# routers here compute their logits in fp32). Under forcing, losses of the logits (z-loss, load
# balance) and un-renormalised weights (DeepSeek-V2, sigmoid scores) are not meaningful.
FORCE_LOGIT = 1.0e4

TRACE_FORMAT = "moebench-routing-trace"
TRACE_VERSION = 1
_CHUNK_ELEMENTS = 1 << 22  # bound the [tokens, E] scratch of the weighted samplers to ~32 MB each


# --- validation -------------------------------------------------------------------------------


def _bad(dist: str, param: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"routing distribution {dist!r}: parameter {param}={value!r} is invalid: {allowed}")


def _check_int(dist: str, param: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise _bad(dist, param, value, f"must be an integer >= {minimum}")


def _check_float(dist: str, param: str, value: Any, minimum: float, strict: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < minimum or (strict and value == minimum):
        raise _bad(dist, param, value, f"must be a finite number {'>' if strict else '>='} {minimum:g}")


def _check_shape(dist: str, T: Any, E: Any, K: Any, step: Any) -> None:
    for param, value, minimum in (("n_tokens", T, 1), ("n_experts", E, 1), ("top_k", K, 1), ("step", step, 0)):
        _check_int(dist, param, value, minimum)
    if K > E:
        raise _bad(dist, "top_k", K, f"must be <= n_experts ({E})")


def _generators(seed: int, step: int) -> tuple[torch.Generator, np.random.Generator]:
    """Independent torch and numpy streams for one (seed, step); SeedSequence mixes the pair well."""
    torch_ss, numpy_ss = np.random.SeedSequence([seed, step]).spawn(2)
    gen = torch.Generator().manual_seed(int(torch_ss.generate_state(1, dtype=np.uint64)[0]))
    return gen, np.random.default_rng(numpy_ss)


# --- samplers ------------------------------------------------------------------------------------


def _uniform_distinct(T: int, E: int, K: int, gen: torch.Generator) -> torch.Tensor:
    """[T, K]: each row a uniformly random ordered set of K distinct experts."""
    if 2 * K * K <= E:
        # Rows with a repeat are redrawn whole (P(repeat) <= K^2/2E <= 1/4): conditioning i.i.d. draws
        # on distinctness is exactly uniform, and it never builds a [T, E] tensor (PEER-sized E).
        idx_TK = torch.randint(E, (T, K), generator=gen)
        while True:
            sorted_TK = idx_TK.sort(dim=1).values
            repeat_T = (sorted_TK[:, 1:] == sorted_TK[:, :-1]).any(dim=1)
            n_bad = int(repeat_T.sum())
            if n_bad == 0:
                return idx_TK
            idx_TK[repeat_T] = torch.randint(E, (n_bad, K), generator=gen)
    chunk = max(1, _CHUNK_ELEMENTS // E)
    return torch.cat([torch.rand(min(chunk, T - t), E, generator=gen).topk(K, dim=1).indices
                      for t in range(0, T, chunk)])


def inclusion_probs(p_E: torch.Tensor, K: int) -> torch.Tensor:
    """pi_E: probability that a token's K distinct experts include e; sums to K, each <= 1.

    pi = K * p where that is <= 1; experts with K * p_e > 1 are capped at 1 and the remaining
    K - (#capped) is shared among the others in proportion to p (repeated until none exceeds 1).
    """
    p_E = p_E.double().clamp(min=torch.finfo(torch.float64).tiny)  # no expert exactly impossible
    capped_E = torch.zeros_like(p_E, dtype=torch.bool)
    while True:
        rest_E = torch.where(capped_E, 0.0, p_E)
        pi_E = torch.where(capped_E, 1.0, (K - int(capped_E.sum())) * rest_E / rest_E.sum())
        over_E = pi_E > 1
        if not over_E.any():
            return pi_E
        capped_E |= over_E


def _systematic(pi_E: torch.Tensor, T: int, K: int, gen: torch.Generator) -> torch.Tensor:
    """[T, K] distinct experts, expert e included with probability exactly pi_E[e] (Madow 1949).

    Lay the experts in a random order on a line, each an interval of length pi_e (total K), draw
    u ~ U(0, 1) and take the experts under the points u, u+1, ..., u+K-1. An interval of length
    <= 1 holds at most one point, so the K experts are distinct; P(e chosen) = pi_e. A fresh order
    per token keeps which experts co-occur random too.
    """
    E, chunk, out = pi_E.numel(), max(1, _CHUNK_ELEMENTS // pi_E.numel()), []
    for t in range(0, T, chunk):
        n = min(chunk, T - t)
        order_nE = torch.rand(n, E, generator=gen).argsort(dim=1)
        cum_nE = pi_E[order_nE].cumsum(dim=1)
        cum_nE[:, -1] = K  # exact end of the line: u + K - 1 < K always lands on an expert
        points_nK = torch.rand(n, 1, generator=gen, dtype=torch.float64) + torch.arange(K, dtype=torch.float64)
        pos_nK = torch.searchsorted(cum_nE, points_nK, right=True)
        out.append(order_nE.gather(1, pos_nK))
    return torch.cat(out)


def zipf_popularity(E: int, alpha: float) -> torch.Tensor:
    """p_E: p_e proportional to 1 / (e + 1)**alpha, normalised (float64)."""
    w_E = torch.arange(1, E + 1, dtype=torch.float64).pow(-float(alpha))
    return w_E / w_E.sum()


# --- distributions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Uniform:
    """Each token takes K distinct experts uniformly at random: loads ~ Binomial(T, K/E)."""

    seed: int = 0
    name: ClassVar[str] = "uniform"

    def __post_init__(self) -> None:
        _check_int(self.name, "seed", self.seed, 0)

    def sample(self, T: int, E: int, K: int, step: int = 0, device: Any = None) -> torch.Tensor:
        _check_shape(self.name, T, E, K, step)
        return _uniform_distinct(T, E, K, _generators(self.seed, step)[0]).to(device)

    def expected_share(self, E: int, K: int) -> torch.Tensor | None:
        return torch.full((E,), 1.0 / E, dtype=torch.float64)


@dataclass(frozen=True)
class Balanced:
    """Perfect balance: assignment a = t*K + k goes to expert a mod E (round robin), then the expert
    labels and the token order are shuffled per step. K consecutive values mod E are distinct
    (K <= E). Every expert gets exactly T*K/E assignments when E divides T*K; otherwise loads are
    floor(T*K/E) or one more, and the T*K mod E fuller experts are a random set each step.
    A token's experts are K neighbours in that step's shuffled cycle, so co-occurrence is structured.
    """

    seed: int = 0
    name: ClassVar[str] = "balanced"

    def __post_init__(self) -> None:
        _check_int(self.name, "seed", self.seed, 0)

    def sample(self, T: int, E: int, K: int, step: int = 0, device: Any = None) -> torch.Tensor:
        _check_shape(self.name, T, E, K, step)
        gen = _generators(self.seed, step)[0]
        slot_TK = (torch.arange(T * K) % E).view(T, K)
        label_E = torch.randperm(E, generator=gen)
        return label_E[slot_TK][torch.randperm(T, generator=gen)].to(device)

    def expected_share(self, E: int, K: int) -> torch.Tensor | None:
        return torch.full((E,), 1.0 / E, dtype=torch.float64)


@dataclass(frozen=True)
class Zipf:
    """Expert popularity p_e proportional to 1/rank**alpha (rank = e + 1); alpha = 0 is uniform.
    The expected load share of expert e is p_e (capped, see inclusion_probs)."""

    alpha: float = 1.0
    seed: int = 0
    name: ClassVar[str] = "zipf"

    def __post_init__(self) -> None:
        _check_float(self.name, "alpha", self.alpha, 0.0, strict=False)
        _check_int(self.name, "seed", self.seed, 0)

    def sample(self, T: int, E: int, K: int, step: int = 0, device: Any = None) -> torch.Tensor:
        _check_shape(self.name, T, E, K, step)
        pi_E = inclusion_probs(zipf_popularity(E, self.alpha), K)
        return _systematic(pi_E, T, K, _generators(self.seed, step)[0]).to(device)

    def expected_share(self, E: int, K: int) -> torch.Tensor | None:
        return inclusion_probs(zipf_popularity(E, self.alpha), K) / K


@dataclass(frozen=True)
class KHot:
    """Every token takes K distinct experts uniformly from the hot set {0, ..., h-1}; the other
    E - h experts receive nothing (K <= h <= E, checked when sampling)."""

    h: int = 2
    seed: int = 0
    name: ClassVar[str] = "khot"

    def __post_init__(self) -> None:
        _check_int(self.name, "h", self.h, 1)
        _check_int(self.name, "seed", self.seed, 0)

    def _check_h(self, E: int, K: int) -> None:
        if not K <= self.h <= E:
            raise _bad(self.name, "h", self.h, f"must satisfy top_k ({K}) <= h <= n_experts ({E})")

    def sample(self, T: int, E: int, K: int, step: int = 0, device: Any = None) -> torch.Tensor:
        _check_shape(self.name, T, E, K, step)
        self._check_h(E, K)
        return _uniform_distinct(T, self.h, K, _generators(self.seed, step)[0]).to(device)

    def expected_share(self, E: int, K: int) -> torch.Tensor | None:
        self._check_h(E, K)
        share_E = torch.zeros(E, dtype=torch.float64)
        share_E[: self.h] = 1.0 / self.h
        return share_E


@dataclass(frozen=True)
class Dirichlet:
    """Each step (batch) draws its own popularity p ~ Dirichlet(concentration * 1_E), then routes as
    zipf does with that p. Small concentration = a few dominant experts per batch, changing from batch
    to batch; large = near uniform. No fixed share: E[p_e] = 1/E, but one batch is far from it."""

    concentration: float = 1.0
    seed: int = 0
    name: ClassVar[str] = "dirichlet"

    def __post_init__(self) -> None:
        _check_float(self.name, "concentration", self.concentration, 0.0, strict=True)
        _check_int(self.name, "seed", self.seed, 0)

    def popularity(self, E: int, step: int = 0) -> torch.Tensor:
        """p_E of that step (float64, sums to 1): the expected load shares of its batch (K*p <= 1)."""
        _check_shape(self.name, 1, E, 1, step)
        rng = _generators(self.seed, step)[1]
        return torch.from_numpy(rng.dirichlet(np.full(E, float(self.concentration))))

    def sample(self, T: int, E: int, K: int, step: int = 0, device: Any = None) -> torch.Tensor:
        _check_shape(self.name, T, E, K, step)
        pi_E = inclusion_probs(self.popularity(E, step), K)
        return _systematic(pi_E, T, K, _generators(self.seed, step)[0]).to(device)

    def expected_share(self, E: int, K: int) -> torch.Tensor | None:
        return None


@dataclass(frozen=True)
class Trace:
    """Replay a recorded routing (file format: record_trace). The recorded steps are read as one
    stream of token rows: step s takes rows [s*T, (s+1)*T) modulo the stream length, so with T equal
    to the recorded batch size step s replays recorded step s, cycling. E and K must match the
    recording and T may not exceed the recorded tokens. `seed` is unused (replay is deterministic)."""

    path: str = ""
    seed: int = 0
    name: ClassVar[str] = "trace"
    _idx_AK: torch.Tensor = field(init=False, repr=False, compare=False)
    _n_experts: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.path, (str, os.PathLike)) or not str(self.path):
            raise _bad(self.name, "path", self.path, "must be the path of a trace file written by record_trace")
        _check_int(self.name, "seed", self.seed, 0)
        steps, n_experts = load_trace(self.path)
        object.__setattr__(self, "_idx_AK", torch.cat(steps))
        object.__setattr__(self, "_n_experts", n_experts)

    def sample(self, T: int, E: int, K: int, step: int = 0, device: Any = None) -> torch.Tensor:
        _check_shape(self.name, T, E, K, step)
        A, K_rec = self._idx_AK.shape
        if (E, K) != (self._n_experts, K_rec):
            raise ValueError(f"routing trace {self.path}: recorded with n_experts={self._n_experts}, "
                             f"top_k={K_rec}; cannot replay with n_experts={E}, top_k={K}")
        if T > A:
            raise ValueError(f"routing trace {self.path}: holds {A} tokens; cannot replay batches of {T}")
        rows_T = (step * T + torch.arange(T)) % A
        return self._idx_AK[rows_T].to(device)

    def expected_share(self, E: int, K: int) -> torch.Tensor | None:
        return None


DISTRIBUTIONS: dict[str, type] = {
    cls.name: cls for cls in (Uniform, Balanced, Zipf, KHot, Dirichlet, Trace)
}


def make_distribution(name: str, **params: Any):
    """The distribution `name` with parameters from a suite file (`seed` included, default 0)."""
    if name not in DISTRIBUTIONS:
        raise ValueError(f"unknown routing distribution {name!r}; valid names are " + ", ".join(DISTRIBUTIONS))
    cls = DISTRIBUTIONS[name]
    allowed = [f.name for f in dataclasses.fields(cls) if f.init]
    for param in params:
        if param not in allowed:
            raise ValueError(f"routing distribution {name!r} has no parameter {param!r}; "
                             "allowed parameters are " + ", ".join(allowed))
    return cls(**params)


def describe(dist) -> dict[str, Any]:
    """What a result records about its routing: name, parameters, seed (and a trace's sha256)."""
    params = {f.name: getattr(dist, f.name) for f in dataclasses.fields(dist) if f.init and f.name != "seed"}
    out = {"name": dist.name, "params": {k: str(v) if isinstance(v, os.PathLike) else v for k, v in params.items()},
           "seed": dist.seed}
    if isinstance(dist, Trace):
        out["trace_sha256"] = hashlib.sha256(Path(dist.path).read_bytes()).hexdigest()
    return out


def expected_load_share(name: str, params: dict[str, Any], E: int, K: int = 1) -> torch.Tensor | None:
    """share_E (float64, sums to 1): the expected fraction of assignments each expert receives, where
    analytic: uniform and balanced 1/E, zipf p_e, khot 1/h on the hot set. None for dirichlet (each
    batch draws its own; see Dirichlet.popularity) and trace. K matters only when K*p_max > 1 (zipf)."""
    dist = make_distribution(name, **params)
    _check_shape(name, 1, E, K, 0)
    return dist.expected_share(E, K)


def forcing_logits(idx_TK: torch.Tensor, E: int, magnitude: float = FORCE_LOGIT) -> torch.Tensor:
    """offset_TE (fp32, on idx_TK's device): `magnitude` at the K chosen experts of each token, 0 elsewhere.

    logits_TE.float() + offset_TE makes top-K pick exactly idx_TK (as a set per token) whenever
    |logits| < magnitude / 2; see FORCE_LOGIT for why 1e4 and why fp32.
    """
    if idx_TK.dim() != 2 or idx_TK.dtype != torch.int64:
        raise ValueError(f"forcing_logits: idx_TK must be an int64 [T, K] tensor, got {idx_TK.dtype} "
                         f"{list(idx_TK.shape)}")
    offset_TE = torch.zeros(idx_TK.shape[0], E, dtype=torch.float32, device=idx_TK.device)
    return offset_TE.scatter_(1, idx_TK, magnitude)


# --- trace files -------------------------------------------------------------------------------------
# An uncompressed .npz (numpy, no pickle) holding: format = "moebench-routing-trace", version = 1,
# n_experts (scalar), idx_AK (int64 [A, K]: every step's idx_TK stacked) and step_offsets (int64
# [n_steps + 1]: step s is rows step_offsets[s]:step_offsets[s+1]).


def _check_steps(where: str, steps: list[torch.Tensor], n_experts: int) -> None:
    K = steps[0].shape[1] if steps and steps[0].dim() == 2 else None
    for s, idx_TK in enumerate(steps):
        if idx_TK.dim() != 2 or idx_TK.shape[0] < 1 or idx_TK.shape[1] != K or not K:
            raise ValueError(f"{where}: step {s} has shape {list(idx_TK.shape)}; every step must be "
                             f"[T >= 1, K] with the same K ({K})")
        if K > n_experts:
            raise ValueError(f"{where}: top_k={K} exceeds n_experts={n_experts}")
        bad_TK = (idx_TK < 0) | (idx_TK >= n_experts)
        if bad_TK.any():
            t = int(bad_TK.any(dim=1).nonzero()[0])
            raise ValueError(f"{where}: step {s} token {t} routes to experts {idx_TK[t].tolist()}; "
                             f"experts must be in [0, {n_experts})")
        sorted_TK = idx_TK.sort(dim=1).values
        repeat_T = (sorted_TK[:, 1:] == sorted_TK[:, :-1]).any(dim=1)
        if repeat_T.any():
            t = int(repeat_T.nonzero()[0])
            raise ValueError(f"{where}: step {s} token {t} routes to {idx_TK[t].tolist()}; "
                             "the K experts of a token must be distinct")


def record_trace(path: str | os.PathLike, idx_TK_list: list, *, n_experts: int) -> None:
    """Write steps of routing (each int [T, K], T may vary) as a trace file; atomic (no partial file)."""
    where = f"routing trace {path}"
    if not isinstance(n_experts, int) or isinstance(n_experts, bool) or n_experts < 1:
        raise ValueError(f"{where}: n_experts={n_experts!r} must be a positive integer")
    if len(idx_TK_list) == 0:
        raise ValueError(f"{where}: no steps to record")
    steps = [torch.as_tensor(np.asarray(idx.cpu() if torch.is_tensor(idx) else idx)) for idx in idx_TK_list]
    for s, idx_TK in enumerate(steps):
        if idx_TK.dtype.is_floating_point or idx_TK.dtype.is_complex or idx_TK.dtype == torch.bool:
            raise ValueError(f"{where}: step {s} has dtype {idx_TK.dtype}; expert indices must be integers")
    steps = [idx_TK.long() for idx_TK in steps]
    _check_steps(where, steps, n_experts)
    offsets = np.cumsum([0] + [idx_TK.shape[0] for idx_TK in steps])
    tmp = Path(f"{path}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:  # a file object, so numpy does not append ".npz" to the name
            np.savez(f, format=np.array(TRACE_FORMAT), version=np.array(TRACE_VERSION),
                     n_experts=np.array(n_experts), idx_AK=torch.cat(steps).numpy(), step_offsets=offsets)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_trace(path: str | os.PathLike) -> tuple[list[torch.Tensor], int]:
    """(steps, n_experts) of a trace file, validated; every problem is a ValueError naming the file."""
    where = f"routing trace {path}"
    if not Path(path).is_file():
        raise ValueError(f"{where}: file not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except Exception as err:  # zipfile, pickle and format errors all mean "not a trace file"
        raise ValueError(f"{where}: not a trace file written by record_trace ({err})") from None
    missing = [k for k in ("format", "version", "n_experts", "idx_AK", "step_offsets") if k not in arrays]
    if missing:
        raise ValueError(f"{where}: missing array {missing[0]!r}; a trace holds format, version, n_experts, "
                         "idx_AK, step_offsets (write it with record_trace)")
    if str(arrays["format"]) != TRACE_FORMAT or int(arrays["version"]) != TRACE_VERSION:
        raise ValueError(f"{where}: format {str(arrays['format'])!r} version {arrays['version']}; "
                         f"expected {TRACE_FORMAT!r} version {TRACE_VERSION}")
    idx_AK, offsets, n_experts = arrays["idx_AK"], arrays["step_offsets"], arrays["n_experts"]
    if idx_AK.dtype.kind not in "iu" or offsets.dtype.kind not in "iu" or n_experts.dtype.kind not in "iu":
        raise ValueError(f"{where}: idx_AK, step_offsets and n_experts must be integers")
    if (idx_AK.ndim != 2 or offsets.ndim != 1 or len(offsets) < 2 or offsets[0] != 0
            or offsets[-1] != idx_AK.shape[0] or (np.diff(offsets) < 1).any()):
        raise ValueError(f"{where}: step_offsets {offsets.tolist()} do not split idx_AK "
                         f"{list(idx_AK.shape)} into non-empty steps")
    if n_experts.ndim != 0 or int(n_experts) < 1:
        raise ValueError(f"{where}: n_experts={n_experts.tolist()} must be a positive integer")
    flat_AK = torch.from_numpy(idx_AK.astype(np.int64))
    steps = list(flat_AK.split(np.diff(offsets).tolist()))
    _check_steps(where, steps, int(n_experts))
    return steps, int(n_experts)


__all__ = ["DISTRIBUTIONS", "FORCE_LOGIT", "describe", "expected_load_share", "forcing_logits",
           "inclusion_probs", "load_trace", "make_distribution", "record_trace", "zipf_popularity"]
