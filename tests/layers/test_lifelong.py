"""Lifelong-MoE: expansion, freezing, constant compute per token, distillation toward the old layer."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from moebench.dispatch.common import ffn
from moebench.layers import build_layer
from moebench.layers.lifelong import LifelongMoE
from moebench.spec import LayerSpec

BASE = dict(variant="lifelong", d_model=16, d_ff=8, n_experts=4, top_k=2, backend="loop")


def make(seed: int = 0, **fields) -> LifelongMoE:
    torch.manual_seed(seed)
    return build_layer(LayerSpec(**{**BASE, **fields}))


def naive_forward(layer: LifelongMoE, x_TD: torch.Tensor) -> torch.Tensor:
    """Per token: softmax over all gate rows, top-K, renormalise, weighted sum of expert FFNs."""
    spec, gate = layer.spec, layer.router.gate.full().detach().double()
    w_in, w_out = layer.experts.w_in_EID.detach().double(), layer.experts.w_out_EDF.detach().double()
    rows = []
    for x_D in x_TD.double():
        logits = [float(g @ x_D) for g in gate]
        z = sum(math.exp(v) for v in logits)
        p = [math.exp(v) / z for v in logits]
        chosen = sorted(range(len(p)), key=lambda i: -p[i])[:spec.top_k]
        total = sum(p[i] for i in chosen)
        rows.append(sum(p[i] / total * ffn(x_D, w_in[i], w_out[i], spec.activation) for i in chosen))
    return torch.stack(rows)


def frozen_and_new(layer: LifelongMoE):
    weights = (layer.router.gate, layer.experts.w_in, layer.experts.w_out)
    return [w.frozen for w in weights], [w.new for w in weights]


@pytest.mark.parametrize("backend", ["loop", "sort_gather"])
def test_matches_naive_reference_before_and_after_expand(backend):
    layer = make(backend=backend)
    x_TD = torch.randn(11, 16)
    torch.testing.assert_close(layer(x_TD).double(), naive_forward(layer, x_TD), rtol=1e-4, atol=1e-5)
    layer.expand(3)
    torch.testing.assert_close(layer(x_TD).double(), naive_forward(layer, x_TD), rtol=1e-4, atol=1e-5)


def test_expand_grows_e_keeps_k_and_compute_per_token():
    layer = make()
    x_TD = torch.randn(64, 16)
    layer(x_TD)
    assert layer.last_stats.n_assignments == 64 * 2
    layer.expand(4)
    layer.expand(2)
    assert layer.spec.n_experts == 10 and layer.spec.top_k == 2 and layer.experts.n_experts == 10
    assert layer.router.gate.full().shape == (10, 16) and layer.n_frozen == 8
    layer(x_TD)
    stats = layer.last_stats
    assert stats.load_E.shape == (10,) and stats.kept_load_E.sum() == 64 * 2  # K experts per token, as before
    assert stats.n_assignments / stats.n_tokens == 2
    assert stats.load_E[8:].sum() > 0  # the new experts are reachable


def test_old_parameters_get_no_gradient_new_ones_do():
    layer = make(n_shared=1)
    layer.expand(3)
    layer(torch.randn(40, 16)).square().sum().backward()
    frozen, new = frozen_and_new(layer)
    for p in frozen:
        assert not p.requires_grad and p.grad is None
    for p in new + [layer.shared.w_in_ID]:
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert [p.shape[0] for p in frozen] == [4, 4, 4] and [p.shape[0] for p in new] == [3, 3, 3]


def test_frozen_rows_survive_adamw_with_weight_decay():
    layer = make()
    layer.expand(2)
    frozen_before = [p.clone() for p in frozen_and_new(layer)[0]]
    new_before = [p.detach().clone() for p in frozen_and_new(layer)[1]]
    opt = torch.optim.AdamW(layer.parameters(), lr=0.1, weight_decay=0.5)
    for _ in range(3):
        opt.zero_grad()
        layer(torch.randn(32, 16)).square().sum().backward()
        opt.step()
    frozen, new = frozen_and_new(layer)
    for before, after in zip(frozen_before, frozen, strict=True):
        assert torch.equal(before, after)
    for before, after in zip(new_before, new, strict=True):
        assert not torch.equal(before, after)


def test_distill_pulls_toward_the_layer_before_expand():
    layer = make(n_shared=1, shared_gate=True, lifelong_distill=0.7, routed_scaling=1.3)
    before = copy.deepcopy(layer).eval()
    layer.expand(3)
    layer.train()
    x_TD = torch.randn(24, 16)
    y_TD = layer(x_TD)
    expected = 0.7 * (y_TD.detach() - before(x_TD).detach()).square().mean()
    torch.testing.assert_close(layer.last_stats.aux_losses["distill"].detach(), expected)
    assert layer.last_stats.aux_losses["distill"] > 0
    # Training moves the shared expert and the new experts, never the previous model.
    opt = torch.optim.SGD([p for p in layer.parameters() if p.requires_grad], lr=0.05)
    for _ in range(3):
        opt.zero_grad()
        (layer(x_TD).square().mean() + layer.aux_loss()).backward()
        opt.step()
    assert not torch.equal(layer.shared.w_in_ID, before.shared.w_in_ID)
    torch.testing.assert_close(layer.previous_output(x_TD), before(x_TD).detach())


def test_distill_gradient_reaches_only_trainable_parameters():
    layer = make(lifelong_distill=1.0)
    layer.expand(2)
    layer.train()
    layer(torch.randn(30, 16))
    layer.last_stats.aux_losses["distill"].backward()
    frozen, new = frozen_and_new(layer)
    assert all(p.grad is None for p in frozen)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in new)


def test_distill_only_in_training_after_an_expand():
    layer = make(lifelong_distill=1.0)
    layer.train()
    layer(torch.randn(8, 16))
    assert "distill" not in layer.last_stats.aux_losses  # nothing to distill from yet
    layer.expand(1)
    layer.eval()
    layer(torch.randn(8, 16))
    assert "distill" not in layer.last_stats.aux_losses
    assert {"z_loss", "load_balance"} <= set(layer.last_stats.aux_losses)


def test_capacity_uses_the_current_number_of_experts():
    layer = make(capacity_factor=1.0)
    layer.expand(4)
    layer(torch.randn(40, 16))
    C = math.ceil(1.0 * 40 * 2 / 8)
    assert layer.last_stats.capacity == C and layer.last_stats.kept_load_E.max() <= C


def test_expand_refuses_bad_sizes_without_changing_the_layer():
    layer = make(n_groups=2, topk_groups=2)
    with pytest.raises(ValueError, match="n_new"):
        layer.expand(0)
    with pytest.raises(ValueError, match="n_groups"):
        layer.expand(1)  # 5 experts cannot form 2 groups
    assert layer.spec.n_experts == 4 and layer.n_frozen == 0 and layer.experts.n_experts == 4
    with pytest.raises(ValueError, match="noisy_gating"):
        make(noisy_gating=True)
