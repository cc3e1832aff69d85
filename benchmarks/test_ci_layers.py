"""The ci suite's layers (suites/ci.yaml) as pytest-benchmark benchmarks, forward pass.

Each benchmark builds the layer from the suite case's own LayerSpec and seed, and times one forward
over the case's tokens with the case's routing (the layer's own router, or the suite's forced
distribution, as `moebench run ci` does). The case id is the benchmark's parameter id, so
--benchmark-compare matches them across runs.
"""

from __future__ import annotations

import time

import pytest
import torch

from moebench.dispatch.common import torch_dtype
from moebench.layers import build_layer
from moebench.routing.distributions import forcing_logits, make_distribution
from moebench.suite import load_suite

CASES = load_suite("ci").cases


def synced_perf_counter() -> float:
    """perf_counter once the GPU has finished everything queued: pytest-benchmark reads this timer
    before and after each call, so a CUDA layer is timed to the end of its kernels, not of their launch."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


def build(case, device: str):
    """The layer, its input and (for forced routing) the selection offsets, from the case's seed."""
    spec, work = case.spec, case.workload
    torch.manual_seed(work.seed)
    layer = build_layer(spec).to(device).eval()
    gen = torch.Generator().manual_seed(work.seed)
    x = torch.randn(work.batch, work.tokens, spec.d_model, generator=gen).to(device, torch_dtype(spec.dtype))
    if work.routing != "router":
        dist = make_distribution(work.routing, seed=work.seed, **work.routing_params)
        selection = dist.sample(work.batch * work.tokens, spec.n_experts, spec.top_k, step=0)
        layer.router.selection_offset_TE = forcing_logits(selection, spec.n_experts).to(device)
    return layer, x


@pytest.mark.benchmark(timer=synced_perf_counter, group="ci-forward")
@pytest.mark.parametrize("case", CASES, ids=[c.case_id for c in CASES])
def test_forward(benchmark, case, device):
    layer, x = build(case, device)

    def forward():
        with torch.inference_mode():
            return layer(x)

    y = benchmark(forward)
    assert y.shape == x.shape  # the benchmark ran the real layer
