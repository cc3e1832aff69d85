"""The triton dispatch backend's grouped-GEMM kernels against the loop reference (on CPU through the
Triton interpreter), its tile schedule by hand, and its refusal where it cannot run.
Axis legend: T tokens, D model dim, F expert hidden dim, E experts, K experts per token, L tiles."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from moebench import LayerSpec  # noqa: E402
from moebench.dispatch import get_backend  # noqa: E402
from moebench.dispatch.loop import run_loop  # noqa: E402
from moebench.dispatch.triton import run_triton  # noqa: E402
from moebench.kernels.grouped_triton import tile_schedule  # noqa: E402
from moebench.routing.assignment import Routing  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def test_tile_schedule_by_hand():
    # counts 5, 0, 17, 1 with 8-row tiles: expert 0 rows [0, 5); expert 2 rows [5, 13), [13, 21), [21, 22);
    # expert 3 row [22, 23). Bound: ceil(23 / 8) + 4 = 7 tiles, the last two unused (start >= end).
    expert_L, start_L, end_L = tile_schedule(torch.tensor([5, 0, 17, 1]), 23, 8)
    used = start_L < end_L
    assert expert_L[used].tolist() == [0, 2, 2, 2, 3]
    assert start_L[used].tolist() == [0, 5, 13, 21, 22]
    assert end_L[used].tolist() == [5, 13, 21, 22, 23]
    assert len(expert_L) == 7 and used.sum() == 5


def routing(T: int, E: int, K: int, gen: torch.Generator) -> Routing:
    idx_TK = torch.stack([torch.randperm(E, generator=gen)[:K] for _ in range(T)])
    r = Routing.from_top_k(idx_TK, torch.rand(T, K, generator=gen) + 0.1, E)
    r.kept_A = torch.rand(T * K, generator=gen) > 0.2  # some dropped
    return r


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("activation", ["swiglu", "gelu", "relu"])
@pytest.mark.parametrize("T, E, K, D, Fh", [(9, 4, 2, 12, 10), (40, 3, 3, 20, 36), (1, 5, 1, 8, 4)])
def test_matches_loop_forward_and_gradients(dtype, tol, activation, T, E, K, D, Fh):
    gen = torch.Generator().manual_seed(T + E)
    I = 2 * Fh if activation == "swiglu" else Fh
    x, w_in, w_out = (torch.randn(*s, generator=gen).to(dtype) for s in ((T, D), (E, I, D), (E, D, Fh)))
    r = routing(T, E, K, gen)
    r.weight_A.requires_grad_(True)
    leaves = [t.to(DEVICE).requires_grad_(True) for t in (x, w_in, w_out)]
    r.token_A, r.expert_A, r.kept_A = (t.to(DEVICE) for t in (r.token_A, r.expert_A, r.kept_A))
    y = run_triton(*leaves[:1], r, *leaves[1:], activation)
    want = run_loop(*leaves[:1], r, *leaves[1:], activation)
    scale = want.float().abs().max().item()
    torch.testing.assert_close(y.float(), want.float(), rtol=tol, atol=tol * scale)
    dy = torch.randn(T, D, generator=gen).to(dtype).to(DEVICE)
    got = torch.autograd.grad(y, [*leaves, r.weight_A], dy)
    ref = torch.autograd.grad(want, [*leaves, r.weight_A], dy)
    for g, w in zip(got, ref, strict=True):  # backward is torch's grouped_mm: equal to summation order
        torch.testing.assert_close(g.float(), w.float(), rtol=tol, atol=tol * w.float().abs().max().item())


def test_nothing_kept_gives_zeros():
    gen = torch.Generator().manual_seed(0)
    r = routing(4, 3, 2, gen)
    r.kept_A[:] = False
    x = torch.randn(4, 8, device=DEVICE)
    y = run_triton(x, r, torch.randn(3, 8, 8, device=DEVICE), torch.randn(3, 8, 4, device=DEVICE), "swiglu")
    assert torch.equal(y, torch.zeros_like(x))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_refused_on_cpu_without_the_interpreter(monkeypatch):
    backend = get_backend("triton")
    backend.check(LayerSpec(backend="triton"))  # the interpreter is on in this session
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(ValueError, match="backend='triton' cannot run here.*TRITON_INTERPRET=1"):
        backend.check(LayerSpec(backend="triton"))
    with pytest.raises(ValueError, match="'triton' cannot run on cpu tensors"):
        run_triton(torch.randn(2, 4), routing(2, 2, 1, torch.Generator()), torch.randn(2, 8, 4),
                   torch.randn(2, 4, 4), "swiglu")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the compiled kernels with 16-bit tl.dot")
def test_cuda_bf16_tiles_larger_than_the_interpreters():
    gen = torch.Generator().manual_seed(3)
    T, E, K, D, Fh = 300, 8, 2, 256, 384
    x, w_in, w_out = (torch.randn(*s, generator=gen).bfloat16().cuda() for s in ((T, D), (E, 2 * Fh, D), (E, D, Fh)))
    r = routing(T, E, K, gen)
    r.token_A, r.expert_A, r.kept_A, r.weight_A = (t.cuda() for t in (r.token_A, r.expert_A, r.kept_A, r.weight_A))
    want = run_loop(x, r, w_in, w_out, "swiglu").float()
    torch.testing.assert_close(run_triton(x, r, w_in, w_out, "swiglu").float(), want, rtol=2e-2,
                               atol=2e-2 * want.abs().max().item())
