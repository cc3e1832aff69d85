"""DeepSeekMoE / V2 / V3 against a per-token reference written straight from the formulas."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moebench.dispatch.common import ffn
from moebench.layers import build_layer
from moebench.layers.deepseek import DeepSeekMoE
from moebench.spec import LayerSpec

V2 = dict(variant="deepseek", d_model=16, d_ff=8, n_experts=8, top_k=3, n_shared=2, score_func="softmax",
          renormalize=False, routed_scaling=1.5, n_groups=4, topk_groups=2, backend="loop")
V3 = dict(variant="deepseek", d_model=16, d_ff=8, n_experts=8, top_k=3, n_shared=1, score_func="sigmoid",
          expert_bias=True, renormalize=True, routed_scaling=2.5, n_groups=4, topk_groups=2, backend="loop")


def make(seed: int = 0, **fields) -> DeepSeekMoE:
    torch.manual_seed(seed)
    layer = build_layer(LayerSpec(**fields))
    if fields.get("expert_bias"):
        layer.router.bias_E.normal_(std=0.3)  # a bias large enough to change some selections
    return layer


def naive_choice(layer: DeepSeekMoE, x_D: torch.Tensor) -> tuple[list[int], list[float], list[int]]:
    """One token: (chosen experts, their weights, allowed groups), per the module docstring."""
    spec = layer.spec
    logits = [float(w @ x_D) for w in layer.router.w_gate_ED.detach().double()]
    if spec.score_func == "softmax":
        z = sum(math.exp(v) for v in logits)
        s = [math.exp(v) / z for v in logits]
    else:
        s = [1 / (1 + math.exp(-v)) for v in logits]
    c = [s[i] + (float(layer.router.bias_E[i]) if spec.expert_bias else 0.0) for i in range(len(s))]
    size = spec.n_experts // spec.n_groups
    group_score = []
    for g in range(spec.n_groups):
        members = sorted(c[g * size:(g + 1) * size], reverse=True)
        group_score.append(members[0] if spec.score_func == "softmax" else sum(members[:2]))
    groups = sorted(range(spec.n_groups), key=lambda g: -group_score[g])[:spec.topk_groups]
    allowed = [i for i in range(spec.n_experts) if i // size in groups]
    chosen = sorted(allowed, key=lambda i: -c[i])[:spec.top_k]
    w = [s[i] for i in chosen]
    if spec.renormalize:
        w = [v / sum(w) for v in w]
    return chosen, w, groups


def naive_forward(layer: DeepSeekMoE, x_TD: torch.Tensor) -> torch.Tensor:
    spec, e = layer.spec, layer.experts
    x = x_TD.double()
    rows = []
    for x_D in x:
        chosen, w, _ = naive_choice(layer, x_D)
        routed = sum(wi * ffn(x_D, e.w_in_EID[i].double(), e.w_out_EDF[i].double(), spec.activation)
                     for i, wi in zip(chosen, w, strict=True))
        y = spec.routed_scaling * routed
        if layer.shared is not None:
            y = y + ffn(x_D, layer.shared.w_in_ID.double(), layer.shared.w_out_DF.double(), spec.activation)
        rows.append(y)
    return torch.stack(rows)


@pytest.mark.parametrize("fields", [
    V2, V3,
    {**V2, "n_groups": 1, "topk_groups": 1, "backend": "sort_gather"},
    {**V3, "n_groups": 2, "topk_groups": 1, "top_k": 2, "activation": "gelu", "backend": "sort_gather"},
    {**V2, "renormalize": True, "n_shared": 0},
    {**V3, "expert_bias": False, "renormalize": False, "shared_d_ff": 12},
])
def test_matches_naive_reference(fields):
    layer = make(**fields)
    x = torch.randn(2, 7, 16)
    torch.testing.assert_close(layer(x).double(), naive_forward(layer, x.reshape(-1, 16)).reshape(2, 7, 16),
                               rtol=1e-4, atol=1e-5)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), v3=st.booleans(), n_groups=st.sampled_from([2, 4, 8]),
       topk_groups=st.integers(1, 3))
def test_group_limited_routing_stays_in_the_chosen_groups(seed, v3, n_groups, topk_groups):
    size, topk_groups = 8 // n_groups, min(topk_groups, n_groups)
    K = min(3, topk_groups * size)
    layer = make(seed, **{**(V3 if v3 else V2), "n_groups": n_groups, "topk_groups": topk_groups, "top_k": K})
    x_TD = torch.randn(9, 16)
    expert_TK = layer.router(x_TD).expert_A.view(9, K)
    for t in range(9):
        chosen, _, groups = naive_choice(layer, x_TD[t].double())
        assert {int(i) // size for i in expert_TK[t]} <= set(groups)
        assert sorted(expert_TK[t].tolist()) == sorted(chosen)


def test_v3_bias_changes_selection_not_weights():
    layer = make(**{**V3, "n_groups": 1, "topk_groups": 1})
    layer.router.bias_E.zero_()
    x_TD = torch.randn(32, 16)
    scores_TE = torch.sigmoid(x_TD @ layer.router.w_gate_ED.T)
    before = layer.router(x_TD).expert_A.view(32, 3)
    layer.router.bias_E[5] = 10.0  # every token now selects expert 5
    routing = layer.router(x_TD)
    expert_TK, weight_TK = routing.expert_A.view(32, 3), routing.weight_A.view(32, 3)
    assert (expert_TK == 5).any(-1).all() and not (before == 5).any(-1).all()
    kept_TK = scores_TE.gather(1, expert_TK)
    torch.testing.assert_close(weight_TK, kept_TK / kept_TK.sum(-1, keepdim=True))  # un-biased scores
    assert layer.router.bias_E.grad is None and not layer.router.bias_E.requires_grad


def test_shared_experts_contribute_and_routed_scaling_is_applied():
    base = {**V3, "n_shared": 2, "routed_scaling": 1.0}
    plain, scaled = make(0, **base), make(0, **{**base, "routed_scaling": 2.5})
    scaled.load_state_dict(plain.state_dict())
    x_TD = torch.randn(10, 16)
    shared_TD = plain.shared(x_TD)
    assert shared_TD.abs().max() > 1e-3
    torch.testing.assert_close(scaled(x_TD) - shared_TD, 2.5 * (plain(x_TD) - shared_TD), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(plain(x_TD) - shared_TD, plain.experts(x_TD, plain.router(x_TD)))


@pytest.mark.parametrize("fields", [V2, V3])
def test_balance_loss_matches_formula(fields):
    layer = make(**{**fields, "aux_loss_coef": 0.003})
    x_TD = torch.randn(20, 16)
    layer(x_TD)
    T, E, K = 20, 8, 3
    s_TE = x_TD @ layer.router.w_gate_ED.T
    s_TE = torch.softmax(s_TE, -1) if fields["score_func"] == "softmax" else torch.sigmoid(s_TE)
    s_TE = s_TE / s_TE.sum(-1, keepdim=True)
    counts = torch.bincount(layer.router(x_TD).expert_A, minlength=E).float()
    expected = 0.003 * sum((E / (K * T)) * counts[i] * s_TE[:, i].mean() for i in range(E))
    torch.testing.assert_close(layer.last_stats.aux_losses["load_balance"], expected)


@pytest.mark.parametrize("score_func", ["softmax", "sigmoid"])
def test_balance_loss_is_alpha_under_uniform_routing(score_func):
    """Token t prefers experts t and t+1 (mod E): every expert gets K of the T = E tokens, and by
    cyclic symmetry every expert has the same mean score, so f_i = 1, P_i = 1/E, loss = alpha1."""
    E = 8
    layer = make(**{**V2, "score_func": score_func, "d_model": E, "n_experts": E, "top_k": 2, "n_groups": 1,
                    "topk_groups": 1, "aux_loss_coef": 0.003})
    layer.router.w_gate_ED.data = 4 * torch.eye(E)
    x_TD = torch.eye(E) + 0.5 * torch.roll(torch.eye(E), 1, dims=1)
    layer(x_TD)
    assert layer.last_stats.load_E.tolist() == [2] * E
    torch.testing.assert_close(layer.last_stats.aux_losses["load_balance"], torch.tensor(0.003))


def test_update_bias_follows_the_sign_rule():
    layer = make(**{**V3, "bias_update_rate": 0.01})
    layer.router.bias_E.zero_()
    x_TD = torch.randn(40, 16)
    layer.train()
    layer(x_TD)
    layer(x_TD)
    load_E = 2 * torch.bincount(layer.router(x_TD).expert_A, minlength=8).float()  # eval: not accumulated
    layer.update_bias()
    torch.testing.assert_close(layer.router.bias_E, 0.01 * torch.sign(load_E.mean() - load_E))
    assert layer.router.load_since_update_E.sum() == 0
    layer.eval()
    layer(x_TD)
    layer.update_bias()  # nothing accumulated in eval: bias unchanged
    torch.testing.assert_close(layer.router.bias_E, 0.01 * torch.sign(load_E.mean() - load_E))


def test_capacity_drops_and_dropped_assignments_contribute_nothing():
    layer = make(**{**V2, "capacity_factor": 0.5, "n_shared": 0, "routed_scaling": 1.0})
    x_TD = torch.randn(24, 16)
    y_TD = layer(x_TD)
    C = math.ceil(0.5 * 24 * 3 / 8)
    assert layer.last_stats.capacity == C and layer.last_stats.kept_load_E.max() <= C
    assert layer.last_stats.assignments_dropped > 0
    routing = layer.router(x_TD)
    expected = torch.zeros_like(y_TD)
    for a in range(routing.n_assignments):
        if routing.kept_A[a]:
            t, e = routing.token_A[a], routing.expert_A[a]
            expected[t] += routing.weight_A[a] * ffn(x_TD[t], layer.experts.w_in_EID[e], layer.experts.w_out_EDF[e],
                                                     "swiglu")
    torch.testing.assert_close(y_TD, expected, rtol=1e-5, atol=1e-6)


def test_gradients_reach_router_and_experts():
    layer = make(**V3)
    layer(torch.randn(12, 16)).square().sum().backward()
    for p in (layer.router.w_gate_ED, layer.experts.w_in_EID, layer.shared.w_in_ID):
        assert p.grad is not None and p.grad.abs().sum() > 0
