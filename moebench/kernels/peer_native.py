"""PEER's product-key top-k and expert gather-dot in plain C, for CPU (float32; no autograd).

    product_topk, per (head, token): the sorted top K of each half's R sub-key scores (row_topk), then
    the sorted top K of the candidate pair sums (moebench.layers.peer.candidate_pairs), expert a*R + b
    gather_dot, per token: h[t, a] = u[idx[t, a]] . x_t, prefetching the u rows AHEAD retrievals on
row_topk is exact and prunes (K <= 16, R a multiple of 64, R >= 256; other rows are scanned whole): one
vectorised pass of maxima over 64 strided groups gives a lower bound tau of the K-th largest score, and
only the scores >= tau (~K for random rows) enter the sorted buffer of K (details at row_topk).

Why C: torch.topk costs ~4 us per row of 1024 scores on CPU (16384 rows per forward at the issue-5
config: 65 ms of a 270 ms forward); this runs ~3x faster, and torch offers no pruned or fused top-k. The
gather-dot reads random 2 KiB rows, bound by memory latency: software prefetch (which neither torch nor
inductor emits) keeps several rows in flight, ~10% faster than the inductor loop at that config.
The source is moebench/kernels/csrc/peer.c, compiled once per machine with the system C compiler, as
inductor's CPU code is (moebench.kernels.native_build), and called through ctypes inside two torch custom
ops (torch.ops.moebench.peer_product_topk, peer_gather_dot) whose fake kernels let fake tensors and
torch.compile through without running C; `available()` says whether it compiled (`build().status` why
not). Scores equal torch's
bit for bit (the same float32 sums); which of tied scores is kept may differ from torch.topk, as between
torch versions. NaN scores are never retrieved (torch.topk ranks them first; a row with under K other
scores is padded with -inf scores of expert 0).
Threads: torch.get_num_threads() of torch's own OpenMP workers, over contiguous ranges of rows (fan_out).
Axis legend: T tokens, D model dim, N experts, H heads, P = 2 halves, R sub-keys per half, K retrieved per
head, C candidate pairs, A = H*K retrieved per token.
"""

from __future__ import annotations

import ctypes
import functools

import torch

from moebench.kernels import native_build

MAX_K = 256  # the C buffers' size
MAX_THREADS = native_build.MAX_THREADS


@functools.cache
def build() -> native_build.Build:
    """csrc/peer.c compiled and loaded once per process (or why not)."""
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    built = native_build.load("peer", {"peer_product_topk": [ptr] * 5 + [i64] * 5 + [ctypes.c_int],
                                       "peer_gather_dot": [ptr] * 4 + [i64] * 4 + [ctypes.c_int]})
    if built.dll is not None:
        built.dll.peer_gather_dot.restype = i64
    return built


def available() -> bool:
    """True when csrc/peer.c compiled and loaded here (build().status says why not)."""
    return build().dll is not None


def _lib() -> ctypes.CDLL:
    if build().dll is None:
        raise RuntimeError(f"peer_native: native kernels {build().status}")
    return build().dll


def _threads(work: int) -> int:
    return max(1, min(torch.get_num_threads(), MAX_THREADS, work))


def _check(*tensors: torch.Tensor, dtype: torch.dtype) -> None:
    for t in tensors:
        if t.device.type != "cpu" or not t.is_contiguous() or t.dtype != dtype:
            raise ValueError(f"peer_native needs contiguous CPU {dtype} tensors, got {t.dtype} on {t.device}"
                             f"{'' if t.is_contiguous() else ' (not contiguous)'}")


# The C functions as torch custom ops. Each checks its arguments (the C code trusts shapes and layouts; it
# checks index ranges itself) and runs C on real CPU tensors; under fake tensors (the host-sync probe,
# torch.compile's tracing) its fake kernel checks the same and only says what the outputs look like.
_OPS = torch.library.Library("moebench", "FRAGMENT")  # kept alive: dropping it would unregister the ops


def _check_product_topk(s_HPTR: torch.Tensor, i_C: torch.Tensor, j_C: torch.Tensor, K: int, score_THK: torch.Tensor,
                        idx_THK: torch.Tensor) -> None:
    if s_HPTR.dim() != 4 or s_HPTR.shape[1] != 2 or not 1 <= K <= min(s_HPTR.shape[3], MAX_K):
        raise ValueError(f"product_topk needs s [H, 2, T, R] and 1 <= K <= min(R, {MAX_K}), got s "
                         f"{tuple(s_HPTR.shape)}, K={K}")
    _check(s_HPTR, score_THK, dtype=torch.float32)
    _check(i_C, j_C, idx_THK, dtype=torch.int64)
    H, _, T, _ = s_HPTR.shape
    if score_THK.shape != (T, H, K) or idx_THK.shape != (T, H, K) or i_C.dim() != 1 or i_C.shape != j_C.shape:
        raise ValueError(f"product_topk out= needs [T, H, K] = [{T}, {H}, {K}] tensors, and two equal 1-d rank lists; "
                         f"got {tuple(score_THK.shape)}, {tuple(idx_THK.shape)}, {tuple(i_C.shape)}, "
                         f"{tuple(j_C.shape)}")


@native_build.custom_op(_OPS, "peer_product_topk(Tensor s_HPTR, Tensor i_C, Tensor j_C, int K, "
                              "Tensor(a!) score_THK, Tensor(b!) idx_THK) -> ()", fake=_check_product_topk)
def _product_topk_op(s_HPTR: torch.Tensor, i_C: torch.Tensor, j_C: torch.Tensor, K: int, score_THK: torch.Tensor,
                     idx_THK: torch.Tensor) -> None:
    _check_product_topk(s_HPTR, i_C, j_C, K, score_THK, idx_THK)
    H, _, T, R = s_HPTR.shape
    if _lib().peer_product_topk(s_HPTR.data_ptr(), score_THK.data_ptr(), idx_THK.data_ptr(), i_C.data_ptr(),
                                j_C.data_ptr(), H, T, R, K, len(i_C), _threads(H * T)):
        raise ValueError(f"product_topk: candidate ranks must lie in [0, K = {K})")


def _dots_like(x_TD: torch.Tensor, u_ND: torch.Tensor, idx_TA: torch.Tensor) -> torch.Tensor:
    """The gather-dot's output, after checking its arguments."""
    _check(x_TD, u_ND, dtype=torch.float32)
    _check(idx_TA, dtype=torch.int64)
    if x_TD.dim() != 2 or u_ND.dim() != 2 or idx_TA.dim() != 2 or u_ND.shape[1] != x_TD.shape[1] \
            or len(idx_TA) != len(x_TD):
        raise ValueError(f"gather_dot: x {tuple(x_TD.shape)}, u {tuple(u_ND.shape)}, idx {tuple(idx_TA.shape)} "
                         "disagree")
    return x_TD.new_empty(x_TD.shape[0], idx_TA.shape[1])


@native_build.custom_op(_OPS, "peer_gather_dot(Tensor x_TD, Tensor u_ND, Tensor idx_TA) -> Tensor", fake=_dots_like)
def _gather_dot_op(x_TD: torch.Tensor, u_ND: torch.Tensor, idx_TA: torch.Tensor) -> torch.Tensor:
    h_TA = _dots_like(x_TD, u_ND, idx_TA)
    (T, A), (N, D) = h_TA.shape, u_ND.shape
    if T and A and _lib().peer_gather_dot(x_TD.data_ptr(), u_ND.data_ptr(), idx_TA.data_ptr(), h_TA.data_ptr(),
                                          N, T, A, D, _threads(T)):
        raise ValueError(f"gather_dot: indices outside [0, {N})")
    return h_TA


def product_topk(s_HPTR: torch.Tensor, i_C: torch.Tensor, j_C: torch.Tensor, K: int, *,
                 out: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(score_THK, idx_THK) of the top K product keys per (token, head), sorted descending; expert a*R + b.
    s_HPTR: float32 [H, 2, T, R] sub-key scores; i_C, j_C: candidate rank pairs (candidate_pairs(K));
    out: contiguous float32 and int64 [T, H, K] to write into."""
    H, _, T, _ = s_HPTR.shape
    score_THK, idx_THK = out or (s_HPTR.new_empty(T, H, K), s_HPTR.new_empty(T, H, K, dtype=torch.int64))
    _product_topk_op(s_HPTR, i_C.contiguous(), j_C.contiguous(), K, score_THK, idx_THK)
    return score_THK, idx_THK


def gather_dot(x_TD: torch.Tensor, u_ND: torch.Tensor, idx_TA: torch.Tensor) -> torch.Tensor:
    """h_TA[t, a] = u[idx[t, a]] . x_t in float32, the u rows of the next retrievals prefetched; no autograd.
    An index outside [0, N) is a ValueError."""
    return _gather_dot_op(x_TD, u_ND, idx_TA)
