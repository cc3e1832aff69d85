"""Every routed variant gives the same outputs and gradients with every dispatch backend.

For each variant registered in moebench.layers.VARIANTS (read when the tests are collected, so new
variants join without edits here) the layer is built with backend="loop", its state_dict is copied
into the same spec with each other backend, and both run on the same input with the same torch seed
set right before forward, so stochastic routers (noisy gating, jitter, GShard's random second
expert, RL sampling) route identically. Train and eval mode, fp32 and bf16, with and without
capacity, T=1 and K=E included. Layers that can grow (`expand`) are also compared after growing.
"""

from __future__ import annotations

import pytest
import torch
from dispatch_compare import assert_close_scaled

from moebench.dispatch import BACKENDS
from moebench.dispatch.common import torch_dtype
from moebench.layers import VARIANTS, build_layer
from moebench.spec import ROUTED_VARIANTS, LayerSpec

ROUTED = [v for v in VARIANTS if v in ROUTED_VARIANTS]  # all but dense and peer
OTHER_BACKENDS = [name for name in BACKENDS if name != "loop"]
SHAPES = {"one_token": (1, 4, 2), "k_equals_e": (6, 4, 4), "nine_tokens": (9, 4, 2)}  # (T, E, K)

# Settings that make a variant's stochastic or optional paths run (unknown variants get none).
EXTRAS = {
    "token_choice": {"noisy_gating": True, "jitter": 0.1},
    "deepseek": {"n_shared": 1, "routed_scaling": 2.0, "expert_bias": True},
    "lifelong": {"lifelong_distill": 0.5, "n_shared": 1},
}


def spec_for(variant: str, shape: str, capacity: bool, dtype: str, backend: str = "loop") -> LayerSpec:
    """A small spec that respects the variant's constraints.

    sinkhorn / rl route top-1 and gshard top-2, so "K = E" shrinks E to match; expert choice has no
    capacity_factor: its capacity is expert_capacity_c tokens per expert (T*c/E).
    """
    T, E, K = SHAPES[shape]
    fixed_k = {"sinkhorn": 1, "rl": 1, "gshard": 2}.get(variant)
    if fixed_k is not None:
        E, K = (fixed_k, fixed_k) if K == E else (E, fixed_k)
    fields = {"variant": variant, "d_model": 8, "d_ff": 8, "n_experts": E, "top_k": K, "dtype": dtype,
              "backend": backend, **EXTRAS.get(variant, {})}
    if variant == "expert_choice":
        fields["expert_capacity_c"] = 1.0 if capacity else 2.0
    else:
        fields["capacity_factor"] = 1.0 if capacity else None
    return LayerSpec(**fields)


def forward_backward(layer: torch.nn.Module, x, token_ids, g, seed: int):
    """Output, input gradient and {name: gradient} of sum(y * g) + the layer's aux losses."""
    layer.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    torch.manual_seed(seed)  # right before forward: stochastic routers draw the same numbers
    y = layer(x, token_ids=token_ids)
    loss = (y.float() * g).sum()
    if hasattr(layer, "aux_loss"):
        loss = loss + layer.aux_loss().float()
    loss.backward()
    return y.detach(), x.grad, {name: p.grad for name, p in layer.named_parameters()}


def compare(ref, other, dtype: torch.dtype, what: str) -> None:
    (y_ref, gx_ref, grads_ref), (y, gx, grads) = ref, other
    assert_close_scaled(y, y_ref, dtype, f"{what} output")
    assert_close_scaled(gx, gx_ref, dtype, f"{what} grad x")
    assert grads.keys() == grads_ref.keys()
    for name, grad_ref in grads_ref.items():
        assert_close_scaled(grads[name], grad_ref, dtype, f"{what} grad {name}")


@pytest.mark.parametrize("capacity", [False, True], ids=["dropless", "capacity"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("variant", ROUTED)
def test_backends_agree_on_every_routed_variant(variant, shape, dtype, capacity):
    torch.manual_seed(0)
    spec = spec_for(variant, shape, capacity, dtype)
    reference = build_layer(spec)
    layers = {}
    for name in OTHER_BACKENDS:
        other_spec = spec.replace(backend=name)
        try:
            BACKENDS[name].check(other_spec)
        except ValueError:
            with pytest.raises(ValueError):
                build_layer(other_spec)
            continue
        layers[name] = build_layer(other_spec)
    for layer in layers.values():
        layer.load_state_dict(reference.state_dict())
    T, D = SHAPES[shape][0], spec.d_model
    x = torch.randn(1, T, D).to(torch_dtype(dtype))
    token_ids = torch.randint(0, 100, (1, T))  # hash routing needs them; the others ignore them
    g = torch.randn(1, T, D)
    compare_train_and_eval(reference, layers, x, token_ids, g, f"{variant} {shape}")
    if hasattr(reference, "expand"):
        for layer in [reference, *layers.values()]:
            layer.expand(2)  # old experts and gate rows freeze: their (None) gradients must agree too
        for layer in layers.values():
            layer.load_state_dict(reference.state_dict())
        compare_train_and_eval(reference, layers, x, token_ids, g, f"{variant} {shape} expanded")


def compare_train_and_eval(reference, layers: dict, x, token_ids, g, what: str) -> None:
    for train in (True, False):
        for layer in [reference, *layers.values()]:
            layer.train(train)
        want = forward_backward(reference, x, token_ids, g, seed=7)
        for name, layer in layers.items():
            compare(want, forward_backward(layer, x, token_ids, g, seed=7), x.dtype,
                    f"{what} {name} {'train' if train else 'eval'}")
