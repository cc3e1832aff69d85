"""Token-choice top-k (Mixtral, Switch, Shazeer noisy, sigmoid) against a per-token reference."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moebench.dispatch.common import ffn
from moebench.layers import build_layer
from moebench.layers.token_choice import TokenChoiceMoE, load_loss
from moebench.spec import LayerSpec

SMALL = dict(variant="token_choice", d_model=12, d_ff=8, n_experts=6, top_k=2, backend="loop")


def make(seed: int = 0, **fields) -> TokenChoiceMoE:
    torch.manual_seed(seed)
    return build_layer(LayerSpec(**{**SMALL, **fields}))


def naive_scores(layer: TokenChoiceMoE, x_D: torch.Tensor) -> list[float]:
    """One token's router scores over all E (softmax or sigmoid of the logits)."""
    logits = [float(w @ x_D) for w in layer.router.w_gate_ED.detach().double()]
    if layer.spec.score_func == "softmax":
        z = sum(math.exp(v) for v in logits)
        return [math.exp(v) / z for v in logits]
    return [1 / (1 + math.exp(-v)) for v in logits]


def naive_choice(layer: TokenChoiceMoE, x_D: torch.Tensor) -> tuple[list[int], list[float]]:
    """One token, Mixtral formula: scores over all E, keep top-K, optionally divide by their sum."""
    spec = layer.spec
    s = naive_scores(layer, x_D)
    chosen = sorted(range(len(s)), key=lambda i: -s[i])[:spec.top_k]
    w = [s[i] for i in chosen]
    if spec.renormalize:
        w = [v / sum(w) for v in w]
    return chosen, w


def naive_forward(layer: TokenChoiceMoE, x_TD: torch.Tensor, kept: list[list[bool]] | None = None) -> torch.Tensor:
    e = layer.experts
    rows = []
    for t, x_D in enumerate(x_TD.double()):
        y_D = torch.zeros_like(x_D)
        for k, (i, w) in enumerate(zip(*naive_choice(layer, x_D), strict=True)):
            if kept is None or kept[t][k]:
                y_D += w * ffn(x_D[None], e.w_in_EID[i].double(), e.w_out_EDF[i].double(), layer.spec.activation)[0]
        rows.append(y_D)
    return torch.stack(rows)


@settings(max_examples=12)
@given(K=st.integers(1, 4), score=st.sampled_from(["softmax", "sigmoid"]), renorm=st.booleans(),
       backend=st.sampled_from(["loop", "sort_gather"]), seed=st.integers(0, 50))
def test_matches_per_token_reference(K, score, renorm, backend, seed):
    layer = make(seed, top_k=K, score_func=score, renormalize=renorm, backend=backend)
    x_TD = torch.randn(10, 12)
    for training in (True, False):  # without noise or jitter, training routes the same way
        y = layer.train(training)(x_TD)
        torch.testing.assert_close(y.double(), naive_forward(layer, x_TD), rtol=1e-4, atol=1e-5)


def test_mixtral_weights_equal_softmax_over_the_kept_logits():
    layer = make(1, top_k=2)
    x_TD = torch.randn(7, 12)
    routing = layer.router(x_TD)
    logits_TE = x_TD @ layer.router.w_gate_ED.detach().t()
    kept_logits = logits_TE.gather(1, routing.expert_A.reshape(7, 2))
    torch.testing.assert_close(routing.weight_A.reshape(7, 2), torch.softmax(kept_logits, -1))


def test_batch_shape_is_kept_and_tokens_are_independent():
    layer = make(2).eval()
    x = torch.randn(2, 5, 12)
    y = layer(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y[1], layer(x[1]))


# --- noisy gating (Shazeer 2017) ----------------------------------------------------------------


def test_noise_only_in_training():
    layer = make(3, noisy_gating=True, top_k=2)
    x_TD = torch.randn(32, 12)
    layer.eval()
    y1, y2 = layer(x_TD), layer(x_TD)
    torch.testing.assert_close(y1, y2)  # eval is deterministic ...
    torch.testing.assert_close(y1.double(), naive_forward(layer, x_TD), rtol=1e-4, atol=1e-5)  # ... and clean
    assert set(layer.last_stats.aux_losses) == {"z_loss", "load_balance"}
    layer.train()
    torch.manual_seed(0)
    y3 = layer(x_TD)
    assert not torch.allclose(y3, y1)  # softplus(0) = 0.69 noise changes some routes or weights
    assert {"importance", "load"} <= set(layer.last_stats.aux_losses)


def test_noise_scale_is_softplus_of_the_noise_logits():
    """With very negative noise logits softplus -> 0: training then routes exactly like eval."""
    layer = make(4, noisy_gating=True, top_k=2, d_model=13)
    x_TD = torch.cat([torch.randn(16, 12), torch.ones(16, 1)], dim=1)  # a constant last feature ...
    with torch.no_grad():
        layer.router.w_noise_ED.zero_()
        layer.router.w_noise_ED[:, -1] = -60.0  # ... drives the noise logits to -60: softplus ~ 1e-26
    routing_train = layer.train().router(x_TD)
    routing_eval = layer.eval().router(x_TD)
    assert torch.equal(routing_train.expert_A, routing_eval.expert_A)
    torch.testing.assert_close(routing_train.weight_A, routing_eval.weight_A)
    with torch.no_grad():
        layer.router.w_noise_ED[:, -1] = 3.0  # noise std ~ 3: training routes differ from eval
    torch.manual_seed(1)
    assert not torch.equal(layer.train().router(x_TD).expert_A, routing_eval.expert_A)


def test_load_loss_matches_naive_formula():
    """Load_i = sum_x Phi((clean_i - kth_excluding(H, k, i)) / noise_std_i); loss = w * CV(Load)^2."""
    g = torch.Generator().manual_seed(5)
    T, E, k = 9, 5, 2
    clean, noise_std = torch.randn(T, E, generator=g), torch.rand(T, E, generator=g) + 0.2
    noisy = clean + torch.randn(T, E, generator=g) * noise_std
    load = [0.0] * E
    for t in range(T):
        for i in range(E):
            others = sorted((noisy[t, j].item() for j in range(E) if j != i), reverse=True)
            z = (clean[t, i].item() - others[k - 1]) / noise_std[t, i].item()
            load[i] += 0.5 * (1 + math.erf(z / math.sqrt(2)))
    mean = sum(load) / E
    cv2 = sum((v - mean) ** 2 for v in load) / E / mean**2  # population variance, as tensor2tensor
    assert load_loss(clean, noisy, noise_std, k, 0.01).item() == pytest.approx(0.01 * cv2, rel=1e-4)


# --- capacity (Switch top-1) ----------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["position", "probs"])
def test_switch_capacity_drops_overflow_tokens_to_zero_output(policy):
    layer = make(6, top_k=1, capacity_factor=1.0, drop_policy=policy, n_experts=4)
    with torch.no_grad():
        layer.router.w_gate_ED[0] += 2 * layer.router.w_gate_ED[1:].abs().sum(0)  # skew toward expert 0
    x_TD = torch.randn(40, 12).abs()
    y = layer.eval()(x_TD)
    C = math.ceil(1.0 * 40 * 1 / 4)
    choices = [naive_choice(layer, x_D) for x_D in x_TD.double()]
    order = list(range(40))
    if policy == "probs":  # lowest router score dropped first (the score before renormalisation)
        order = sorted(order, key=lambda t: -max(naive_scores(layer, x_TD[t].double())))
    used, kept = [0] * 4, [[False] for _ in range(40)]
    for t in order:
        e = choices[t][0][0]
        if used[e] < C:
            used[e], kept[t][0] = used[e] + 1, True
    assert sum(not k[0] for k in kept) > 0  # the skew really overflows expert 0
    torch.testing.assert_close(y.double(), naive_forward(layer, x_TD, kept), rtol=1e-4, atol=1e-5)
    stats = layer.last_stats
    assert stats.assignments_dropped.item() == sum(not k[0] for k in kept)
    assert stats.kept_load_E.max().item() <= C
    dropped = torch.tensor([not k[0] for k in kept])
    assert torch.all(y[dropped] == 0)  # a dropped token gets nothing from the layer (residual only)


def test_collect_stats_off_keeps_aux_losses_for_training():
    layer = make(6, top_k=2, n_experts=4)
    layer.collect_stats = False
    layer.train()(torch.randn(10, 12)).sum().backward()
    assert layer.last_stats is None
    assert set(layer.aux_losses) == {"z_loss", "load_balance"} and layer.aux_loss().requires_grad


@pytest.mark.parametrize("fields", [{"renormalize": False}, {"score_func": "sigmoid", "renormalize": False},
                                    {"variant": "gshard"}])
def test_probs_policy_drops_less_routing_weight_than_position_at_equal_count(fields):
    """Both policies refuse max(0, load - C) assignments per expert; where `probs` ranks by the combine
    weight itself (no renormalisation after top-K, or GShard's gates) it refuses the lightest ones."""
    x_TD = torch.randn(64, 12, generator=torch.Generator().manual_seed(3)).abs()
    summaries = {}
    for policy in ("position", "probs"):
        layer = make(6, top_k=2, capacity_factor=1.0, drop_policy=policy, n_experts=4, **fields)
        with torch.no_grad():
            layer.router.w_gate_ED[0] += 0.1 * layer.router.w_gate_ED[1:].abs().sum(0)  # skew toward expert 0
        layer.eval()(x_TD)
        summaries[policy] = layer.last_stats.summary()
    position, probs = summaries["position"], summaries["probs"]
    assert position["drop_rate"] == probs["drop_rate"] > 0.1
    assert probs["dropped_weight_frac"] < 0.95 * position["dropped_weight_frac"]
    assert 0 < probs["dropped_weight_frac"] < 1


def test_dropless_layer_drops_no_routing_weight():
    layer = make(2, top_k=2, n_experts=4)  # capacity_factor None
    layer.eval()(torch.randn(30, 12))
    assert layer.last_stats.summary()["dropped_weight_frac"] == 0.0
