"""PEER's C product top-k against torch.topk over the same scores, written as the layer's torch path, and
its C gather-dot against the gathered einsum.
Axis legend: T tokens, D model dim, N experts, H heads, P = 2 halves, R sub-keys per half, K retrieved per
head, A retrieved per token."""

from __future__ import annotations

import pytest
import torch

from moebench.kernels import native_build, peer_native
from moebench.layers.peer import candidate_pairs

# Skipped only without a compiler: where one exists and the build fails, these tests fail and say why.
pytestmark = pytest.mark.skipif(not native_build.compiler_present(), reason="no C compiler on PATH (or CC)")


def torch_product_topk(s_HPTR: torch.Tensor, K: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's torch retrieval: sorted top K per half, the candidate pair sums, top K of those."""
    R = s_HPTR.shape[-1]
    top1, a = s_HPTR[:, 0].permute(1, 0, 2).topk(K, dim=-1)
    top2, b = s_HPTR[:, 1].permute(1, 0, 2).topk(K, dim=-1)
    i_C, j_C = candidate_pairs(K, s_HPTR.device)
    score, pick = (top1[..., i_C] + top2[..., j_C]).topk(K, dim=-1)
    return score, (a[..., i_C] * R + b[..., j_C]).gather(-1, pick)


def native(s_HPTR: torch.Tensor, K: int) -> tuple[torch.Tensor, torch.Tensor]:
    return peer_native.product_topk(s_HPTR, *candidate_pairs(K, s_HPTR.device), K)


# R = 1024 and 320 take the pruned path (R a multiple of 64, at least 256); 100 and 64 the full scan
@pytest.mark.parametrize("R", [1024, 320, 100, 64])
@pytest.mark.parametrize("K", [1, 5, 16])
@pytest.mark.parametrize("H, T", [(1, 7), (3, 20), (2, 0)])
def test_matches_torch_topk_on_random_scores(R, K, H, T):
    s_HPTR = torch.randn(H, 2, T, R, generator=torch.Generator().manual_seed(R + K + T))
    score, idx = native(s_HPTR, K)
    want_score, want_idx = torch_product_topk(s_HPTR, K)
    assert score.shape == idx.shape == (T, H, K) and idx.dtype == torch.int64
    assert torch.equal(score, want_score)  # the same float32 sums, sorted descending
    assert torch.equal(idx.sort(-1).values, want_idx.sort(-1).values)  # random scores: no ties


@pytest.mark.parametrize("R", [1024, 100])
def test_ties_keep_the_top_k_values_and_valid_indices(R):
    # a few distinct values: many ties inside each half and among the pair sums
    s_HPTR = torch.randint(0, 6, (2, 2, 9, R), generator=torch.Generator().manual_seed(1)).float()
    score, idx = native(s_HPTR, 8)
    want_score, _ = torch_product_topk(s_HPTR, 8)
    assert torch.equal(score, want_score)
    a, b = idx // R, idx % R
    s1, s2 = s_HPTR[:, 0].permute(1, 0, 2), s_HPTR[:, 1].permute(1, 0, 2)
    assert torch.equal(s1.gather(-1, a) + s2.gather(-1, b), score)  # each score is its expert's
    assert (idx.sort(-1).values.diff(dim=-1) > 0).all()  # no expert twice


def test_nan_scores_are_never_retrieved():
    gen = torch.Generator().manual_seed(2)
    s_HPTR = torch.randn(2, 2, 5, 1024, generator=gen)
    s_HPTR[s_HPTR > 2.0] = float("nan")  # among the largest: torch.topk would rank these first
    s_HPTR[0, 0, 0, 64:] = float("nan")  # a row with whole groups of NaN
    score, idx = native(s_HPTR, 16)
    want_score, _ = torch_product_topk(s_HPTR.nan_to_num(nan=-float("inf")), 16)
    assert torch.equal(score, want_score) and not score.isnan().any()


def test_threads_split_rows_without_changing_results():
    s_HPTR = torch.randn(4, 2, 33, 1024, generator=torch.Generator().manual_seed(3))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = native(s_HPTR, 16)
        torch.set_num_threads(3)
        three = native(s_HPTR, 16)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(x, y) for x, y in zip(one, three, strict=True))


def test_writes_into_out_slices():
    s_HPTR = torch.randn(2, 2, 6, 256, generator=torch.Generator().manual_seed(4))
    score, idx = torch.full((10, 2, 4), 7.0), torch.full((10, 2, 4), -1)
    peer_native.product_topk(s_HPTR, *candidate_pairs(4, s_HPTR.device), 4, out=(score[3:9], idx[3:9]))
    want_score, want_idx = native(s_HPTR, 4)
    assert torch.equal(score[3:9], want_score) and torch.equal(idx[3:9], want_idx)
    assert (score[:3] == 7).all() and (idx[9:] == -1).all()


def test_bad_inputs_are_refused():
    i_C, j_C = candidate_pairs(4, torch.device("cpu"))
    s_HPTR = torch.randn(2, 2, 3, 16)
    with pytest.raises(ValueError, match="1 <= K <= min"):
        peer_native.product_topk(s_HPTR, i_C, j_C, 17)
    with pytest.raises(ValueError, match="float32"):
        peer_native.product_topk(s_HPTR.double(), i_C, j_C, 4)
    with pytest.raises(ValueError, match="not contiguous"):
        peer_native.product_topk(s_HPTR.transpose(0, 1), i_C, j_C, 4)  # H = P = 2
    with pytest.raises(ValueError, match="out= needs"):
        peer_native.product_topk(s_HPTR, i_C, j_C, 4, out=(torch.empty(3, 2, 3), torch.empty(3, 2, 3).long()))


@pytest.mark.parametrize("T, A, D", [(5, 12, 24), (1, 16, 512), (9, 33, 70), (0, 4, 8), (3, 0, 8)])
def test_gather_dot_matches_the_gathered_einsum(T, A, D):
    gen = torch.Generator().manual_seed(T + A + D)
    x, u = torch.randn(T, D, generator=gen), torch.randn(50, D, generator=gen)
    idx = torch.randint(50, (T, A), generator=gen)
    want = torch.einsum("td,tad->ta", x.double(), u.double()[idx]).float()
    threads = torch.get_num_threads()
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            torch.testing.assert_close(peer_native.gather_dot(x, u, idx), want, rtol=1e-5, atol=1e-5)
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(ValueError, match="disagree"):
        peer_native.gather_dot(x, u[:, :-1].contiguous(), idx)

