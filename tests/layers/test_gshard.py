"""GShard top-2 against a per-token reference of its dispatch rules (Lepikhin et al. 2020)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moebench.dispatch.common import ffn
from moebench.layers import build_layer
from moebench.layers.gshard import GShardMoE, gshard_routing
from moebench.routing.capacity import expert_capacity
from moebench.routing.distributions import forcing_logits
from moebench.spec import LayerSpec

SMALL = dict(variant="gshard", d_model=12, d_ff=8, n_experts=5, top_k=2, backend="loop")


def make(seed: int = 0, **fields) -> GShardMoE:
    torch.manual_seed(seed)
    return build_layer(LayerSpec(**{**SMALL, **fields}))


def naive_gshard(logits_TE: torch.Tensor, u_T: list[float] | None, C: int | None,
                 policy: str = "position") -> list[list[tuple]]:
    """Per token: [(expert, weight, kept)] for its first and second choice, GShard Algorithm 1."""
    T, E = logits_TE.shape
    choices = []  # choices[t][k] = (expert, normalised gate)
    for row in logits_TE.double().tolist():
        z = sum(math.exp(v) for v in row)
        p = [math.exp(v) / z for v in row]
        e1, e2 = sorted(range(E), key=lambda e: -p[e])[:2]
        choices.append([(e1, p[e1] / (p[e1] + p[e2])), (e2, p[e2] / (p[e1] + p[e2]))])
    order = [(t, 0) for t in range(T)] + [(t, 1) for t in range(T)]  # all first choices, then seconds
    if policy == "probs":
        order = sorted(order, key=lambda tk: -choices[tk[0]][tk[1]][1])  # stable: ties keep that order
    used = [0] * E
    out = [[None, None] for _ in range(T)]
    for t, k in order:
        e, g = choices[t][k]
        wanted = k == 0 or u_T is None or 2 * g > u_T[t]
        kept = wanted and (C is None or used[e] < C)  # a refused second choice takes no slot
        used[e] += kept
        out[t][k] = (e, g, kept)
    return out


@settings(max_examples=40)
@given(T=st.integers(1, 30), E=st.integers(2, 6), C=st.one_of(st.none(), st.integers(0, 10)),
       random_policy=st.booleans(), policy=st.sampled_from(["position", "probs"]), seed=st.integers(0, 1000))
def test_routing_matches_naive(T, E, C, random_policy, policy, seed):
    g = torch.Generator().manual_seed(seed)
    logits_TE = torch.randn(T, E, generator=g) * 2
    u_T = torch.rand(T, generator=g) if random_policy else None
    routing, _, _ = gshard_routing(logits_TE, u_T, C, policy)
    expected = naive_gshard(logits_TE, None if u_T is None else u_T.tolist(), C, policy)
    assert routing.expert_A.reshape(T, 2).tolist() == [[a[0] for a in row] for row in expected]
    assert routing.kept_A.reshape(T, 2).tolist() == [[a[2] for a in row] for row in expected]
    torch.testing.assert_close(routing.weight_A.reshape(T, 2).double(),
                               torch.tensor([[a[1] for a in row] for row in expected], dtype=torch.float64))


@pytest.mark.parametrize("cf", [None, 0.5, 1.0])
def test_eval_layer_matches_per_token_reference(cf):
    layer = make(1, capacity_factor=cf).eval()
    x_TD = torch.randn(24, 12)
    y = layer(x_TD)
    logits_TE = x_TD.double() @ layer.router.w_gate_ED.detach().double().t()
    C = None if cf is None else expert_capacity(cf, 24, 5, 2)
    e = layer.experts
    y_ref = torch.zeros(24, 12, dtype=torch.float64)
    for t, row in enumerate(naive_gshard(logits_TE, None, C)):
        for i, w, kept in row:
            if kept:
                y_ref[t] += w * ffn(x_TD[t:t + 1].double(), e.w_in_EID[i].double(), e.w_out_EDF[i].double(),
                                    "swiglu")[0]
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-4, atol=1e-5)
    if cf is not None:
        assert layer.last_stats.kept_load_E.max().item() <= C


def test_first_choices_fill_buffers_before_second_choices():
    """Once an expert refuses a first choice, it has accepted no second choice."""
    layer = make(2, capacity_factor=0.5, n_experts=4)
    routing = layer.router.eval()(torch.randn(64, 12))
    expert_T2, kept_T2 = routing.expert_A.reshape(64, 2), routing.kept_A.reshape(64, 2)
    assert (~kept_T2[:, 0]).any()
    for e in range(4):
        if (~kept_T2[:, 0] & (expert_T2[:, 0] == e)).any():
            assert not (kept_T2[:, 1] & (expert_T2[:, 1] == e)).any()


def test_training_keeps_second_choice_with_probability_min_1_2g2():
    """Dropless: P(second kept) = P(u < 2*g2) = min(1, 2*g2); compare the mean over many tokens."""
    layer = make(3, capacity_factor=None).train()
    torch.manual_seed(0)
    x_TD = torch.randn(20000, 12)
    routing = layer.router(x_TD)
    g2_T = routing.weight_A.reshape(-1, 2)[:, 1].detach()
    kept2_T = routing.kept_A.reshape(-1, 2)[:, 1].float()
    expected = torch.clamp(2 * g2_T, max=1.0).mean().item()
    assert kept2_T.mean().item() == pytest.approx(expected, abs=0.01)  # 20000 Bernoullis: sd < 0.004
    assert expected < 0.999  # the random policy really refuses some second choices here
    assert routing.kept_A.reshape(-1, 2)[:, 0].all()  # first choices are never refused when dropless
    # refused second choices take no capacity: eval with the same logits keeps all of them
    assert layer.router.eval()(x_TD).kept_A.all()


def test_weights_sum_to_one_and_aux_losses_present():
    layer = make(4).eval()
    routing = layer.router(torch.randn(10, 12))
    torch.testing.assert_close(routing.weight_A.reshape(10, 2).sum(-1), torch.ones(10))
    assert set(routing.aux_losses) == {"load_balance", "z_loss"}
    routing.weight_A.sum().backward()  # the gates carry the router's gradient
    assert layer.router.w_gate_ED.grad is not None


def test_spec_requires_top_2():
    with pytest.raises(ValueError, match="top_k"):
        LayerSpec(variant="gshard", top_k=1)


def test_selection_offset_forces_the_chosen_pair_and_keeps_router_gates():
    layer = make(5).eval()
    x_TD = torch.randn(12, 12)
    idx_T2 = torch.stack([torch.arange(12) % 5, (torch.arange(12) + 2) % 5], dim=1)
    layer.router.selection_offset_TE = forcing_logits(idx_T2, 5)
    routing = layer.router(x_TD)
    chosen_T2 = routing.expert_A.reshape(12, 2)
    assert [set(r) for r in chosen_T2.tolist()] == [set(r) for r in idx_T2.tolist()]
    probs_TE = torch.softmax(x_TD @ layer.router.w_gate_ED.detach().t(), -1)
    pair_T2 = probs_TE.gather(1, chosen_T2)
    torch.testing.assert_close(routing.weight_A.reshape(12, 2).detach(), pair_T2 / pair_T2.sum(-1, keepdim=True))
    assert (pair_T2[:, 0] >= pair_T2[:, 1]).all()  # the likelier of the pair is the first choice
