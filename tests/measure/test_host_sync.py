"""The fake-tensor host-sync probe: finds the data-dependent operations a real forward runs."""

from __future__ import annotations

import pytest
import torch

from moebench import LayerSpec, build_layer
from moebench.kernels import dispatch_native
from moebench.layers.peer import candidate_pairs
from moebench.measure.host_sync import first_host_sync


def plain_cpu(*tensors: torch.Tensor) -> bool:
    """Each an ordinary CPU tensor (or Parameter), not a fake tensor or other subclass."""
    return all(type(t) in (torch.Tensor, torch.nn.Parameter) and t.device.type == "cpu" for t in tensors)


def routed(backend: str, capacity_factor: float | None) -> torch.nn.Module:
    spec = LayerSpec(d_model=32, d_ff=64, n_experts=4, top_k=2, backend=backend, capacity_factor=capacity_factor)
    layer = build_layer(spec).eval()
    layer.collect_stats = False  # statistics are read on the host on purpose, after timing
    return layer


def test_token_choice_with_capacity_on_padded_buffers_never_syncs():
    """Static capacity buffers, positions by sort + scatter_add, aux loss by scatter_add: capturable."""
    assert first_host_sync(routed("padded", 1.25), torch.randn(16, 32)) is None


@pytest.mark.parametrize("backend,capacity_factor,op", [
    ("padded", None, "_local_scalar_dense"),  # dropless: C = max load, read on the host
    # per-expert counts decide the slices: on CPU the C counting sort's counts read on the host, or torch's
    # bincount where the C kernels are not built
    ("sort_gather", 1.25, "_local_scalar_dense" if dispatch_native.available() else "bincount"),
    ("grouped_mm", None, "bincount"),
])
def test_backends_that_size_buffers_from_the_routing_are_found(backend, capacity_factor, op):
    assert op in first_host_sync(routed(backend, capacity_factor), torch.randn(16, 32))


def test_an_explicit_item_is_found():
    class Reads(torch.nn.Module):
        def forward(self, x):
            return x * x.sum().item()

    assert "_local_scalar_dense" in first_host_sync(Reads(), torch.randn(3))
    assert first_host_sync(torch.nn.Linear(3, 3), torch.randn(2, 3)) is None


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fake_tensors_reach_the_c_kernels_fake_implementations_only(dtype):
    """The probe's fake tensors have no memory: layers whose CPU paths run C code (sort_gather's passes,
    PEER's top-k and gather-dot) reach the C kernels' custom ops, whose fake implementations stand in for
    them, and so report the sync that follows (sort_gather reads its counts; torch's bincount where the C
    kernels are not built)."""
    spec = LayerSpec(d_model=32, d_ff=64, n_experts=4, top_k=2, backend="sort_gather", dtype=dtype)
    layer = build_layer(spec).eval()
    layer.collect_stats = False
    expected = "_local_scalar_dense" if dispatch_native.available() else "bincount"
    assert expected in first_host_sync(layer, torch.randn(16, 32).to(getattr(torch, dtype)))
    peer = build_layer(LayerSpec(variant="peer", d_model=24, peer_experts=16**2, peer_heads=2, peer_k=4, d_key=12,
                                 dtype=dtype)).eval()
    peer.collect_stats = False
    first_host_sync(peer, torch.randn(8, 24).to(getattr(torch, dtype)))  # reaching here: no crash
    # and nothing the probe made stays cached: the candidate pairs a later real forward reads are real
    assert plain_cpu(*candidate_pairs(4, torch.device("cpu")))
    assert peer._keys_cache is None or plain_cpu(*(t for t in peer._keys_cache if isinstance(t, torch.Tensor)))
    peer(torch.randn(8, 24).to(getattr(torch, dtype)))
