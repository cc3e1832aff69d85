"""The C passes around sort_gather's expert GEMMs (moebench.kernels.dispatch_native) against torch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from moebench.kernels import dispatch_native, native_build

# Skipped only without a compiler: where one exists and the build fails, these tests fail and say why.
pytestmark = pytest.mark.skipif(not native_build.compiler_present(), reason="no C compiler on PATH (or CC)")
BF16 = torch.bfloat16


def bf16_step(x: torch.Tensor) -> torch.Tensor:
    """Half a bfloat16 rounding step at each element's magnitude (relative 2^-9)."""
    return x.abs() * 2.0**-8


@pytest.mark.parametrize("n, Fh", [(0, 16), (1, 1), (3, 15), (5, 16), (7, 33), (64, 1408)])
def test_swiglu_is_silu_times_up_rounded_once(n, Fh):
    """Vector body (16 columns at a time) and scalar tail alike: within one bf16 rounding of float32 math."""
    gen = torch.Generator().manual_seed(n * 100 + Fh)
    h = (4 * torch.randn(n, 2 * Fh, generator=gen)).to(BF16)
    want = F.silu(h[:, :Fh].float()) * h[:, Fh:].float()
    got = dispatch_native.swiglu_bf16(h)
    assert got.dtype == BF16 and got.shape == (n, Fh)
    assert ((got.float() - want).abs() <= bf16_step(want) + 1e-30).all()


def test_swiglu_extremes_and_out():
    gate = torch.tensor([float("nan"), -1e4, 1e4, 0.0, -0.0, float("-inf"), 88.5, -88.5] * 4)
    up = torch.tensor([1.0, 2.0, 3.0, float("nan"), 5.0, 6.0, 1.0, 1.0] * 4)
    h = torch.cat([gate, up])[None].to(BF16)
    out = torch.empty(1, 32, dtype=BF16)
    got = dispatch_native.swiglu_bf16(h, out)
    assert got.data_ptr() == out.data_ptr()
    want = F.silu(gate) * up
    assert torch.equal(got[0].float().isnan(), want.isnan())
    finite = ~want.isnan()
    assert torch.allclose(got.float()[0, finite], want.to(BF16).float()[finite], rtol=2**-8, atol=1e-30)


@pytest.mark.parametrize("n, Fh", [(0, 4), (3, 15), (7, 33), (64, 1408)])
def test_swiglu_f32_in_place(n, Fh):
    gen = torch.Generator().manual_seed(n + Fh)
    h = 4 * torch.randn(n, 2 * Fh, generator=gen)
    want = F.silu(h[:, :Fh]) * h[:, Fh:]
    up = h[:, Fh:].clone()
    got = dispatch_native.swiglu_f32_(h)
    assert got.data_ptr() == h.data_ptr() and got.shape == (n, Fh)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert torch.equal(h[:, Fh:], up)  # the up half is left as it was
    edge = torch.tensor([[float("-inf"), -1e4, 1e4, float("nan"), 1.0, 1.0, 1.0, 1.0]])
    torch.testing.assert_close(dispatch_native.swiglu_f32_(edge.clone()), F.silu(edge[:, :4]), equal_nan=True)


def test_swiglu_refuses_bad_input():
    with pytest.raises(ValueError, match="even number"):
        dispatch_native.swiglu_bf16(torch.zeros(2, 5, dtype=BF16))
    with pytest.raises(ValueError, match="bfloat16"):
        dispatch_native.swiglu_bf16(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="not contiguous"):
        dispatch_native.swiglu_bf16(torch.zeros(4, 2, dtype=BF16).t())
    with pytest.raises(ValueError, match=r"must be \[2, 2\]"):
        dispatch_native.swiglu_bf16(torch.zeros(2, 4, dtype=BF16), torch.empty(2, 3, dtype=BF16))


@pytest.mark.parametrize("dtype", [BF16, torch.float32])
@pytest.mark.parametrize("D", [1, 20, 512, 700])
def test_combine_add_is_a_weighted_index_add(dtype, D):
    """Repeated tokens included (columns are split between threads, never rows)."""
    gen = torch.Generator().manual_seed(D)
    T, n = 50, 300
    y = torch.randn(T, D, generator=gen)
    out = torch.randn(n, D, generator=gen).to(dtype)
    token = torch.randint(0, T, (n,), generator=gen)
    weight = torch.rand(n, generator=gen)
    want = y.clone().index_add_(0, token, out.float() * weight[:, None])
    got = dispatch_native.combine_add(y.clone(), out, token, weight)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_combine_add_refuses_disagreeing_shapes():
    with pytest.raises(ValueError, match="disagree"):
        dispatch_native.combine_add(torch.zeros(4, 8), torch.zeros(3, 8), torch.zeros(2, dtype=torch.int64),
                                    torch.zeros(3))
    with pytest.raises(ValueError, match="y must be"):
        dispatch_native.combine_add(torch.zeros(4, 8, dtype=BF16), torch.zeros(3, 8), torch.zeros(3, dtype=torch.int64),
                                    torch.zeros(3))


@pytest.mark.parametrize("A, E, p_drop", [(0, 3, 0.0), (1, 1, 0.0), (40, 5, 0.0), (300, 7, 0.3), (50, 4, 1.0)])
def test_sort_by_expert_is_a_stable_sort_of_the_kept(A, E, p_drop):
    """Same order as sort_gather's torch path (a stable argsort, dropped assignments excluded)."""
    from moebench.dispatch.sort_gather import kept_by_expert
    from moebench.routing.assignment import Routing

    gen = torch.Generator().manual_seed(A + E)
    routing = Routing(torch.randint(0, 9, (A,), generator=gen), torch.randint(0, E, (A,), generator=gen),
                      torch.rand(A, generator=gen), torch.rand(A, generator=gen) >= p_drop, n_tokens=9, n_experts=E)
    token_S, weight_S, counts = dispatch_native.sort_by_expert(routing.expert_A, routing.kept_A, routing.token_A,
                                                               routing.weight_A, E)
    order_S, want_token_S, want_counts_E = kept_by_expert(routing)
    assert counts == want_counts_E.tolist()
    assert torch.equal(token_S, want_token_S)
    assert torch.equal(weight_S, routing.weight_A[order_S])


def test_sort_by_expert_refuses_experts_out_of_range():
    expert = torch.tensor([0, 3, 1])
    with pytest.raises(ValueError, match=r"experts \[3\] outside \[0, 3\)"):
        dispatch_native.sort_by_expert(expert, torch.ones(3, dtype=torch.bool), torch.zeros(3, dtype=torch.int64),
                                       torch.ones(3), 3)
    kept = torch.tensor([True, False, True])  # a dropped assignment's expert is never read
    token_S, _, counts = dispatch_native.sort_by_expert(expert, kept, torch.arange(3), torch.ones(3), 3)
    assert counts == [1, 1, 0] and token_S.tolist() == [0, 2]


def combine_reference(outs, counts, token_S, weight_S, T, D):
    out_SD = torch.cat([o.float() for o in outs]) if outs else torch.zeros(0, D)
    return torch.zeros(T, D).index_add_(0, token_S[:len(out_SD)], out_SD * weight_S[:len(out_SD), None])


@pytest.mark.parametrize("dtype", [BF16, torch.float32])
@pytest.mark.parametrize("D", [16, 100, 512, 1030])
def test_combine_rows_sums_each_tokens_rows(dtype, D):
    """Experts of uneven sizes, tokens in any order, tokens with no rows (zero), more than 512 columns
    (the kernel's accumulator block)."""
    gen = torch.Generator().manual_seed(D)
    T = 40
    counts = [7, 1, 30, 22]  # experts with rows only, as sort_gather passes them
    S = sum(counts)
    token_S = torch.randint(0, T - 5, (S + 4,), generator=gen)  # tokens T-5.. get nothing; 4 dropped extra
    weight_S = torch.rand(S + 4, generator=gen)
    outs = [torch.randn(n, D, generator=gen).to(dtype) for n in counts]
    got = dispatch_native.combine_rows(outs, counts, token_S, weight_S, T, D, dtype)
    want = combine_reference(outs, counts, token_S, weight_S, T, D)
    assert got.dtype == dtype and got.shape == (T, D)
    tol = 2.0**-8 if dtype == BF16 else 1e-6
    torch.testing.assert_close(got.float(), want.to(dtype).float(), rtol=tol, atol=1e-6)
    assert (got[T - 5:] == 0).all()


def test_combine_rows_without_rows_is_zero():
    got = dispatch_native.combine_rows([], [], torch.zeros(0, dtype=torch.int64), torch.zeros(0), 6, 8, BF16)
    assert got.shape == (6, 8) and (got == 0).all()


def test_combine_rows_refuses_mismatched_outputs():
    with pytest.raises(ValueError, match="expected \\[2, 8\\]"):
        dispatch_native.combine_rows([torch.zeros(3, 8)], [2], torch.zeros(2, dtype=torch.int64), torch.zeros(2),
                                     4, 8, torch.float32)
    with pytest.raises(ValueError, match="1 outputs for 2 counts"):
        dispatch_native.combine_rows([torch.zeros(2, 8)], [2, 1], torch.zeros(3, dtype=torch.int64), torch.zeros(3),
                                     4, 8, torch.float32)
