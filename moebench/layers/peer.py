"""PEER (He 2024, "Mixture of A Million Experts"): product-key retrieval over N singleton experts.

    q_h = BN(W_q x)_h = [q1; q2]                    H query networks, each half of dim d_key/2
    s1 = q1 . C,  s2 = q2 . C'                      sub-key scores against n = sqrt(N) keys per half
    top-k of s1, top-k of s2 (sorted); score the sums s1_a + s2_b    (expert i = a*n + b)
      of the rank pairs that can make the top k (candidate_pairs); top-k again
    g = softmax over the k retrieved scores (paper) or relu(score) ("non-competing", PEER-pytorch)
    y = sum_h sum_{i in top-k(h)} g_i * act(u_i . x) * v_i

Product retrieval is exact: if (a, b) is in the top-k of all n^2 sums, a is in the top-k of s1 (else
k rows a' beat it with the same b) and likewise b, so `brute` (score all N, top-k) picks the same
experts up to ties. Product mode never forms [T, N], nor the gathered [T, H, K, D] rows of u and v.

Keys: the paper's heads share one set of product keys (`shared_keys=True`, keys_GPRQ with G = 1);
PEER-pytorch gives every head its own keys (`shared_keys=False`, G = H), needed to load its weights.
Experts (u, v) are always shared by the heads. All weights (BatchNorm too) are in the spec's dtype;
queries are cast to float32 after the BatchNorm so scores, top-k and gates are float32 and both
retrieval modes rank experts identically; gather and expert dot products run in the spec's dtype.
The gather + expert step (moebench.kernels.peer_experts) never forms [T, H*K, D] in full: the v side
is one embedding_bag, the u side runs `chunk_tokens` tokens at a time (None: as many as fit in 32 MiB
of gathered rows), so its extra memory is chunk_tokens*H*K*D elements. `experts_impl` picks "torch",
"compile" (torch.compile'd gather-dot, CPU or GPU), "native" (C gather-dot with prefetch, CPU float32) or
"triton" (one fused kernel; CUDA or the Triton interpreter); all give the same results and gradients up
to summation order. The default, "auto", is "native" where it runs (CPU, float32 weights, the C source
compiled here: moebench.kernels.peer_native.available()), else "torch"; so is topk_impl's.
`topk_impl` picks product retrieval's top-k: "torch" or "native" (C, CPU float32: one pass per
row with pruning, ~3x faster than torch.topk at R = 1024; moebench.kernels.peer_native); both retrieve
the same experts up to ties, and "native" keeps autograd by re-gathering the chosen scores. Without
autograd on CPU, the sub-key scores are one GEMM per (head, half) written in place, on a cached contiguous
copy of the keys (16 MiB at the issue-5 config); with "native" they are made and top-k'd SCORE_BLOCK_BYTES
at a time (retrieve_in_blocks), never [T, H, 2, R] whole.
`last_stats` is a RoutingStats over the N experts (T*H*K assignments, all kept), or None when
`collect_stats` is False (it costs two bincounts over N per forward).

Axis legend: T tokens, D model dim, H heads, N experts (= R**2), R sub-keys per half (n_keys),
P = 2 query halves, Q = d_key/2 half query dim, K experts retrieved per head, G key sets (1 or H),
C candidate pairs.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import unset_fake_temporarily

from moebench.dispatch.common import torch_dtype
from moebench.kernels import peer_native
from moebench.kernels.peer_experts import peer_experts
from moebench.measure.code_path import note
from moebench.measure.phases import phase
from moebench.routing.assignment import Routing, RoutingStats
from moebench.spec import LayerSpec

TOPK_IMPLS = ("auto", "torch", "native")
SCORE_BLOCK_BYTES = 8 * 2**20  # retrieve_in_blocks: one head's sub-key scores held at once (1024 tokens at R = 1024)


@functools.cache
def candidate_pairs(K: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The (i, j) rank pairs of the two sorted half top-Ks that can reach the top K of their sums.

    Pair (i, j) is matched or beaten by every (i', j') with i' <= i, j' <= j: (i+1)(j+1) sums. So it can
    be in the top K only if (i+1)(j+1) <= K: C = sum_i floor(K / i) pairs (50 for K = 16, not 256)."""
    pairs = [(i, j) for i in range(K) for j in range(K) if (i + 1) * (j + 1) <= K]
    # Cached across calls: made outside inference mode, or a later training step could not save it, and
    # outside any fake-tensor mode (moebench.measure.host_sync's probe, torch.compile's tracing), or the
    # cache would hand later real forwards fake tensors (shapes without data) for their real ones.
    with torch.inference_mode(False), unset_fake_temporarily():
        i_C, j_C = torch.tensor(pairs, dtype=torch.long, device=device).T
    return i_C, j_C


class PEER(nn.Module):
    def __init__(self, spec: LayerSpec, shared_keys: bool = True):
        super().__init__()
        if spec.activation not in ("gelu", "relu"):
            raise ValueError(f"LayerSpec.activation={spec.activation!r} is invalid for variant 'peer': PEER experts "
                             "are singleton vectors act(u.x) v with no gate/up pair; allowed values are gelu, relu")
        self.spec = spec
        dtype = torch_dtype(spec.dtype)
        H, D, N, R, Q = spec.peer_heads, spec.d_model, spec.peer_experts, spec.peer_n_keys, spec.d_key // 2
        self.query = nn.Linear(D, H * spec.d_key, bias=False, dtype=dtype)  # output rows ordered (h, p, q)
        self.query_bn = nn.BatchNorm1d(H * spec.d_key, dtype=dtype) if spec.peer_query_batchnorm else None
        # keys ~ N(0, 1/Q) so a sub-key score has the scale of one query coordinate
        self.keys_GPRQ = nn.Parameter(torch.randn(1 if shared_keys else H, 2, R, Q, dtype=dtype) / math.sqrt(Q))
        # fan-in init: u ~ N(0, 1/D) makes u.x O(1) for unit-scale x; each output sums H*K hidden units
        self.u_ND = nn.Parameter(torch.randn(N, D, dtype=dtype) / math.sqrt(D))
        self.v_ND = nn.Parameter(torch.randn(N, D, dtype=dtype) / math.sqrt(H * spec.peer_k))
        self.collect_stats = True
        self.experts_impl = "auto"  # "auto": "native" where it runs (CPU, float32, a C compiler), else "torch"
        self.topk_impl = "auto"
        self._keys_cache: tuple | None = None  # (keys_GPRQ, its version, its [G, P, Q, R] copy): _keys_GPQR
        self.chunk_tokens: int | None = None
        self.last_stats: RoutingStats | None = None

    # --- phases (timed one by one by the measurement code) -------------------------------------

    def queries(self, x_TD: torch.Tensor) -> torch.Tensor:
        """[T, D] -> q_THPQ (float32): H query networks, optional BatchNorm over all H*d_key features."""
        q_TC = self.query(x_TD)
        if self.query_bn is not None:
            q_TC = self.query_bn(q_TC)  # needs T > 1 in training, as any BatchNorm
        return q_TC.float().view(x_TD.shape[0], self.spec.peer_heads, 2, -1)

    def subkey_scores(self, q_THPQ: torch.Tensor) -> torch.Tensor:
        """s_THPR[t, h, p, r] = q_THPQ[t, h, p] . keys[h or 0, p, r]: the 2*R sub-key scores per head."""
        # Scores live in a contiguous [H, P, T, R], returned as a [T, H, P, R] view: top-k then reads rows
        # of R contiguous scores. Shared keys (G = 1) serve every head.
        if self._needs_autograd(q_THPQ) or q_THPQ.device.type != "cpu":
            s_HPTR = torch.matmul(q_THPQ.permute(1, 2, 0, 3), self.keys_GPRQ.float().transpose(-1, -2))
            return s_HPTR.permute(2, 0, 1, 3)
        T, H, P, _ = q_THPQ.shape
        return self._scores_into(q_THPQ, q_THPQ.new_empty(H, P, T, self.spec.peer_n_keys)).permute(2, 0, 1, 3)

    def _needs_autograd(self, q_THPQ: torch.Tensor) -> bool:
        return torch.is_grad_enabled() and (q_THPQ.requires_grad or self.keys_GPRQ.requires_grad)

    def _scores_into(self, q_THPQ: torch.Tensor, s_HPTR: torch.Tensor) -> torch.Tensor:
        # No autograd, CPU: one GEMM per (head, half) written in place runs ~1.4x faster than the batched
        # matmul (at T = 1024, R = 1024, Q = 256), which packs the strided queries per batch.
        keys_GPQR = self._keys_GPQR()
        for h in range(q_THPQ.shape[1]):
            self._head_scores_into(q_THPQ[:, h], keys_GPQR, h, s_HPTR[h])
        return s_HPTR

    @staticmethod
    def _head_scores_into(q_TPQ: torch.Tensor, keys_GPQR: torch.Tensor, h: int, s_PTR: torch.Tensor) -> None:
        """Head h's sub-key scores, one GEMM per half, into s_PTR (keys of head h, or the shared set)."""
        for p in range(q_TPQ.shape[1]):
            torch.mm(q_TPQ[:, p], keys_GPQR[h if len(keys_GPQR) > 1 else 0, p], out=s_PTR[p])

    def _keys_GPQR(self) -> torch.Tensor:
        """float32 keys as contiguous [Q, R] GEMM operands (~10% faster GEMMs than transposed views), kept
        while keys_GPRQ is unchanged: same storage (the cache holds it, so no new tensor can reuse its address)
        and same version counter (bumped by every in-place update, optimizer steps included)."""
        keys, cache = self.keys_GPRQ, getattr(self, "_keys_cache", None)  # None too for modules pickled before it
        if cache is not None:
            src, version, keys_GPQR = cache
            if src.data_ptr() == keys.data_ptr() and src.shape == keys.shape and keys._version == version:
                return keys_GPQR
        with torch.no_grad(), unset_fake_temporarily():  # real even under a fake-tensor mode: see candidate_pairs
            self._keys_cache = (keys.detach(), keys._version, keys.float().transpose(-1, -2).contiguous())
        return self._keys_cache[2]

    def retrieve_in_blocks(self, q_THPQ: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """subkey_scores then retrieve with the native top-k (CPU, no autograd), one head and
        SCORE_BLOCK_BYTES of its scores at a time: the whole [T, H, 2, R] (64 MiB at T = 1024) is never
        allocated, which on CPU means freshly page-faulted memory on every forward, and each block is
        still in cache when the top-k reads it. Per head (4 MiB: 512 tokens at R = 1024) measured 33 ms
        against 37 ms for all heads of 256 tokens at once (16 MiB), with the same GEMM sizes or larger;
        8 MiB (1024 tokens, larger GEMMs) then gave whole forwards 3% faster than 4 MiB (95.5 / 102.2 ms
        against 98.5 / 105.1 ms in two A/B runs at the issue-5 config, 2 threads)."""
        T, H, P, _ = q_THPQ.shape
        K, R = self.spec.peer_k, self.spec.peer_n_keys
        block = max(1, min(T, SCORE_BLOCK_BYTES // (P * R * 4)))
        s_flat = q_THPQ.new_empty(P * block * R)
        score_THK, idx_THK = q_THPQ.new_empty(T, H, K), torch.empty(T, H, K, dtype=torch.long)
        score_T1K, idx_T1K = q_THPQ.new_empty(block, 1, K), torch.empty(block, 1, K, dtype=torch.long)
        i_C, j_C = candidate_pairs(K, q_THPQ.device)
        keys_GPQR = self._keys_GPQR()
        for t0 in range(0, T, block):
            n = min(block, T - t0)
            s_1PTR = s_flat[:P * n * R].view(1, P, n, R)
            for h in range(H):
                with phase("subkey_scores"):
                    self._head_scores_into(q_THPQ[t0:t0 + n, h], keys_GPQR, h, s_1PTR[0])
                with phase("candidate_topk"):
                    peer_native.product_topk(s_1PTR, i_C, j_C, K, out=(score_T1K[:n], idx_T1K[:n]))
                    score_THK[t0:t0 + n, h] = score_T1K[:n, 0]
                    idx_THK[t0:t0 + n, h] = idx_T1K[:n, 0]
        return score_THK, idx_THK

    def retrieve(self, s_THPR: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-K experts per head: (score_THK float32, idx_THK int64 in [0, N)), expert index = a*R + b."""
        K, R = self.spec.peer_k, self.spec.peer_n_keys
        if self.topk_impl not in TOPK_IMPLS:
            raise ValueError(f"PEER topk_impl={self.topk_impl!r} is invalid: allowed values are "
                             f"{', '.join(TOPK_IMPLS)}")
        s1_THR, s2_THR = s_THPR[:, :, 0], s_THPR[:, :, 1]
        if self.spec.peer_retrieval == "brute":
            note("candidate_topk", "torch")
            all_THN = (s1_THR.unsqueeze(-1) + s2_THR.unsqueeze(-2)).flatten(-2)  # [T, H, R*R]
            return all_THN.topk(K, dim=-1)
        if self._resolved_topk_impl(s_THPR) == "native":
            note("candidate_topk", "native_c")
            return self._retrieve_native(s_THPR)
        note("candidate_topk", "torch")
        top1_THK, a_THK = s1_THR.topk(K, dim=-1)  # sorted, descending
        top2_THK, b_THK = s2_THR.topk(K, dim=-1)
        i_C, j_C = candidate_pairs(K, s1_THR.device)
        cand_THC = top1_THK[..., i_C] + top2_THK[..., j_C]
        idx_THC = a_THK[..., i_C] * R + b_THK[..., j_C]
        score_THK, pick_THK = cand_THC.topk(K, dim=-1)
        return score_THK, idx_THC.gather(-1, pick_THK)

    def _resolved_topk_impl(self, scores: torch.Tensor) -> str:
        if self.topk_impl != "auto":
            return self.topk_impl
        native = scores.device.type == "cpu" and scores.dtype == torch.float32 and peer_native.available()
        return "native" if native else "torch"

    def _resolved_experts_impl(self, x_TD: torch.Tensor) -> str:
        if self.experts_impl != "auto":
            return self.experts_impl
        native = x_TD.device.type == "cpu" and self.u_ND.dtype == torch.float32 and peer_native.available()
        return "native" if native else "torch"

    def _retrieve_native(self, s_THPR: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """retrieve's product mode with the C top-k of moebench.kernels.peer_native (CPU, float32)."""
        K, R = self.spec.peer_k, self.spec.peer_n_keys
        i_C, j_C = candidate_pairs(K, s_THPR.device)
        s_HPTR = s_THPR.permute(1, 2, 0, 3).contiguous()  # no copy when s_THPR comes from subkey_scores
        score_THK, idx_THK = peer_native.product_topk(s_HPTR, i_C, j_C, K)
        if torch.is_grad_enabled() and s_THPR.requires_grad:
            # re-gathered so autograd reaches queries and keys: the same float32 sums, bit for bit
            score_THK = s_THPR[:, :, 0].gather(-1, idx_THK // R) + s_THPR[:, :, 1].gather(-1, idx_THK % R)
        return score_THK, idx_THK

    def gates(self, score_THK: torch.Tensor) -> torch.Tensor:
        """g over the K retrieved experts of a head: softmax (competing) or relu (non-competing)."""
        return torch.softmax(score_THK, dim=-1) if self.spec.peer_score == "softmax" else F.relu(score_THK)

    def experts(self, x_TD: torch.Tensor, gate_THK: torch.Tensor, idx_THK: torch.Tensor) -> torch.Tensor:
        """Gather u, v rows and sum g_i * act(u_i . x) * v_i over heads and retrieved experts: [T, D]."""
        T = x_TD.shape[0]
        return peer_experts(x_TD, self.u_ND, self.v_ND, idx_THK.reshape(T, -1), gate_THK.reshape(T, -1),
                            self.spec.activation, impl=self._resolved_experts_impl(x_TD),
                            chunk_tokens=self.chunk_tokens)

    # --- forward --------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:
        """x: [..., D] -> y: [..., D]. token_ids is accepted for interface parity and ignored."""
        x_TD = x.reshape(-1, x.shape[-1]).to(self.u_ND.dtype)
        note("query", "torch")
        note("subkey_scores", "torch")
        with phase("query"):
            q = self.queries(x_TD)
        if (self.spec.peer_retrieval == "product" and not self._needs_autograd(q)
                and self._resolved_topk_impl(q) == "native"):
            note("candidate_topk", "native_c")
            score_THK, idx_THK = self.retrieve_in_blocks(q)
        else:
            with phase("subkey_scores"):
                s = self.subkey_scores(q)
            with phase("candidate_topk"):
                score_THK, idx_THK = self.retrieve(s)
        with phase("candidate_topk"):
            gate_THK = self.gates(score_THK)
        with phase("gather_experts"):
            y_TD = self.experts(x_TD, gate_THK, idx_THK)
        self.last_stats = self.stats(gate_THK, idx_THK) if self.collect_stats else None
        return y_TD.to(x.dtype).reshape(x.shape)

    def stats(self, gate_THK: torch.Tensor, idx_THK: torch.Tensor) -> RoutingStats:
        """Expert loads over all N experts from the retrieved indices; nothing is dropped in PEER."""
        T, A = idx_THK.shape[0], idx_THK.numel()
        routing = Routing(
            token_A=torch.arange(T, device=idx_THK.device).repeat_interleave(A // max(1, T)),
            expert_A=idx_THK.reshape(-1), weight_A=gate_THK.detach().reshape(-1),
            kept_A=torch.ones(A, dtype=torch.bool, device=idx_THK.device),
            n_tokens=T, n_experts=self.spec.peer_experts,
        )
        return RoutingStats.from_routing(routing)
