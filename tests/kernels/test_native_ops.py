"""The C kernels as torch custom ops (torch.ops.moebench.*): torch's own op checks, fake tensors, torch.compile.

Each op's fake kernel stands in for it wherever tensors have shapes but no data, so the host-sync probe and
torch.compile's tracing go through the ops by torch's ordinary mechanism, never reading fake memory."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

from moebench.kernels import dispatch_native, native_build, peer_native
from moebench.layers.peer import candidate_pairs

pytestmark = pytest.mark.skipif(not native_build.compiler_present(), reason="no C compiler on PATH (or CC)")
BF16 = torch.bfloat16
ops = torch.ops.moebench


def sample_args() -> dict[str, tuple]:
    """Arguments for every op, as the checked functions pass them (contiguous CPU tensors)."""
    gen = torch.Generator().manual_seed(0)
    T, D, E, Fh = 12, 32, 3, 16
    counts = [5, 0, 7]
    outs = [torch.randn(n, D, generator=gen) for n in counts if n]
    token_S, weight_S = torch.randint(0, T, (12,), generator=gen), torch.rand(12, generator=gen)
    i_C, j_C = (r.contiguous() for r in candidate_pairs(4, torch.device("cpu")))
    return {
        "swiglu_bf16": (torch.randn(6, 2 * Fh, generator=gen).to(BF16), torch.empty(6, Fh, dtype=BF16)),
        "swiglu_f32_inplace": (torch.randn(6, 2 * Fh, generator=gen),),
        "sort_by_expert": (torch.randint(0, E, (20,), generator=gen), torch.rand(20, generator=gen) > 0.3,
                           torch.randint(0, T, (20,), generator=gen), torch.rand(20, generator=gen), E),
        "combine_add": (torch.zeros(T, D), torch.randn(5, D, generator=gen).to(BF16), token_S[:5], weight_S[:5]),
        "combine_rows": (outs, [5, 7], token_S, weight_S, T, torch.float32),
        "peer_product_topk": (torch.randn(2, 2, T, 64, generator=gen), i_C, j_C, 4, torch.empty(T, 2, 4),
                              torch.empty(T, 2, 4, dtype=torch.int64)),
        "peer_gather_dot": (torch.randn(T, D, generator=gen), torch.randn(64, D, generator=gen),
                            torch.randint(0, 64, (T, 6), generator=gen)),
    }


@pytest.mark.parametrize("name", sample_args().keys())
def test_each_op_passes_torchs_op_checks(name):
    """Schema (what it mutates), fake kernel against the real one, autograd registration, AOT dispatch."""
    results = torch.library.opcheck(getattr(ops, name).default, sample_args()[name])
    assert set(results.values()) == {"SUCCESS"}, results


def test_the_checked_functions_run_on_fake_tensors():
    """Outputs with the real ones' shapes and dtypes, as fake tensors: no C code read fake memory."""
    real = sample_args()
    with FakeTensorMode() as mode:
        fake = {name: tuple(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args)
                for name, args in real.items() if name not in ("combine_rows", "sort_by_expert")}
        act = dispatch_native.swiglu_bf16(fake["swiglu_bf16"][0])
        gate = dispatch_native.swiglu_f32_(*fake["swiglu_f32_inplace"])
        y = dispatch_native.combine_add(*fake["combine_add"])
        rows = dispatch_native.combine_rows([mode.from_tensor(torch.zeros(5, 32))], [5],
                                            mode.from_tensor(torch.zeros(5, dtype=torch.int64)),
                                            mode.from_tensor(torch.ones(5)), 9, 32, BF16)
        score, idx = peer_native.product_topk(*fake["peer_product_topk"][:4])
        h = peer_native.gather_dot(*fake["peer_gather_dot"])
    for got, shape, dtype in ((act, (6, 16), BF16), (gate, (6, 16), torch.float32), (y, (12, 32), torch.float32),
                              (rows, (9, 32), BF16), (score, (12, 2, 4), torch.float32),
                              (idx, (12, 2, 4), torch.int64), (h, (12, 6), torch.float32)):
        assert isinstance(got, FakeTensor) and got.shape == shape and got.dtype == dtype


def test_sort_by_expert_reads_its_counts_on_the_host_as_a_data_dependent_op():
    """Under fake tensors the C sort runs as its fake kernel; reading the counts is the one host sync."""
    from torch._subclasses.fake_tensor import DataDependentOutputException

    args = sample_args()["sort_by_expert"]
    with FakeTensorMode() as mode, pytest.raises(DataDependentOutputException):
        dispatch_native.sort_by_expert(*(mode.from_tensor(a) for a in args[:4]), args[4])


def test_the_ops_refuse_what_would_make_c_read_or_write_out_of_bounds():
    """The ops are callable by anyone (torch.ops.moebench.*): layouts and index ranges are checked."""
    args = sample_args()
    y, out, token, weight = args["combine_add"]
    with pytest.raises(ValueError, match=r"outside \[0, 12\)"):
        ops.combine_add(y, out, torch.tensor([0, 1, 12, 3, 4]), weight)
    assert (y == 0).all()  # nothing written
    x, u, idx = args["peer_gather_dot"]
    with pytest.raises(ValueError, match=r"outside \[0, 64\)"):
        ops.peer_gather_dot(x, u, idx.clone().fill_(64))
    s, i_C, j_C, K, score, top = args["peer_product_topk"]
    with pytest.raises(ValueError, match=r"\[0, K = 4\)"):
        ops.peer_product_topk(s, i_C + 3, j_C, K, score, top)
    with pytest.raises(ValueError, match="not contiguous"):
        ops.peer_product_topk(s, *candidate_pairs(4, torch.device("cpu")), K, score, top)  # strided views
    with pytest.raises(ValueError, match="not contiguous"):
        ops.swiglu_f32_inplace(torch.zeros(8, 4).t())


def moe_tail(h_nI, y_TD, token_n, weight_n, x_TD, u_ND, idx_TA, s_HPTR, i_C, j_C):
    """A little of everything the ops do, mutations included, with no host sync: one graph."""
    act_nF = dispatch_native.swiglu_f32_(h_nI)  # in place, a strided view out
    out_nD = act_nF @ torch.ones(act_nF.shape[1], y_TD.shape[1])
    y_TD = dispatch_native.combine_add(y_TD, out_nD.contiguous(), token_n, weight_n)
    h_TA = peer_native.gather_dot(x_TD, u_ND, idx_TA)
    score_THK, idx_THK = peer_native.product_topk(s_HPTR, i_C, j_C, 4)
    return y_TD.sum() + h_TA.sum() + score_THK.sum(), idx_THK


@pytest.mark.slow
def test_the_ops_compile_into_one_graph():
    """torch.compile(fullgraph=True) with inductor: no graph break at any op, same results as eager."""

    def inputs():
        g = torch.Generator().manual_seed(2)
        return (torch.randn(5, 32, generator=g), torch.zeros(8, 16), torch.randint(0, 8, (5,), generator=g),
                torch.rand(5, generator=g), torch.randn(8, 16, generator=g), torch.randn(64, 16, generator=g),
                torch.randint(0, 64, (8, 3), generator=g), torch.randn(1, 2, 8, 64, generator=g),
                *candidate_pairs(4, torch.device("cpu")))

    torch._dynamo.reset()
    compiled = torch.compile(moe_tail, fullgraph=True, dynamic=False)
    want_sum, want_idx = moe_tail(*inputs())
    got_sum, got_idx = compiled(*inputs())
    torch.testing.assert_close(got_sum, want_sum)
    assert torch.equal(got_idx, want_idx)
