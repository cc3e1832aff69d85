"""Every dispatch backend against the loop reference, on hand-built Routings.

Forward and gradients (x, w_in, w_out, weight_A) must match: fp32 to summation order, bf16 to the
dtype's rounding. The loop itself is checked against a per-assignment sum written for readability.
Axis legend: T tokens, D model dim, F expert hidden dim, E experts, K experts per token,
A assignments, I = rows of w_in.
"""

from __future__ import annotations

import pytest
import torch
from dispatch_compare import assert_close_scaled
from hypothesis import given, settings
from hypothesis import strategies as st

from moebench.dispatch import BACKENDS, get_backend
from moebench.dispatch import grouped_mm as grouped_mm_module
from moebench.dispatch.common import ffn
from moebench.dispatch.grouped_mm import grouped_mm_usable, run_grouped_mm
from moebench.dispatch.loop import run_loop
from moebench.dispatch.padded import run_padded, slot_in_expert
from moebench.layers.experts import in_rows
from moebench.routing.assignment import Routing
from moebench.routing.capacity import position_in_expert
from moebench.spec import ACTIVATIONS, BACKEND_NAMES, LayerSpec


def runs_here(name: str) -> bool:
    """Whether the backend runs on this machine (triton needs CUDA or TRITON_INTERPRET=1): check refuses otherwise."""
    backend = BACKENDS[name]
    try:
        backend.check(LayerSpec(backend=name, capacity_factor=None if backend.supports_dropless else 1.0))
    except ValueError:
        return False
    return True


OTHER_BACKENDS = [name for name in BACKENDS if name != "loop" and runs_here(name)]
DTYPES = [torch.float32, torch.bfloat16]


# --- hand-built routings -----------------------------------------------------------------------

def routing_from(token_A, expert_A, n_tokens: int, n_experts: int, kept_A=None, gen=None) -> Routing:
    token_A = torch.as_tensor(token_A, dtype=torch.long).reshape(-1)
    expert_A = torch.as_tensor(expert_A, dtype=torch.long).reshape(-1)
    kept_A = torch.ones_like(token_A, dtype=torch.bool) if kept_A is None else torch.as_tensor(kept_A)
    weight_A = torch.rand(token_A.numel(), generator=gen) + 0.1
    return Routing(token_A, expert_A, weight_A, kept_A, n_tokens=n_tokens, n_experts=n_experts)


def token_choice(T: int, E: int, K: int, gen: torch.Generator) -> Routing:
    """Token-major: token t picks K distinct experts (a = t*K + k)."""
    expert_TK = torch.stack([torch.randperm(E, generator=gen)[:K] for _ in range(T)]) if T else torch.zeros(0, K)
    return routing_from(torch.arange(T).repeat_interleave(K), expert_TK, T, E, gen=gen)


def expert_choice(T: int, E: int, C: int, gen: torch.Generator) -> Routing:
    """Expert-major: expert e picks C distinct tokens; a token may get 0..E experts."""
    token_EC = torch.stack([torch.randperm(T, generator=gen)[:C] for _ in range(E)])
    return routing_from(token_EC, torch.arange(E).repeat_interleave(C), T, E, gen=gen)


def free_form(T: int, E: int, A: int, gen: torch.Generator) -> Routing:
    """Any (token, expert) pairs, repeats included."""
    return routing_from(torch.randint(T, (A,), generator=gen), torch.randint(E, (A,), generator=gen), T, E, gen=gen)


def drop(routing: Routing, p: float, gen: torch.Generator) -> Routing:
    routing.kept_A = torch.rand(routing.n_assignments, generator=gen) >= p
    return routing


def with_capacity(routing: Routing, slack: int | None) -> Routing:
    """Declare a capacity the kept assignments respect (slack None = dropless)."""
    if slack is not None:
        kept_load = torch.bincount(routing.expert_A[routing.kept_A], minlength=routing.n_experts)
        routing.capacity = int(kept_load.max()) + slack if routing.n_experts else slack
    return routing


def _case(name: str, gen: torch.Generator) -> tuple[Routing, int]:
    """Named edge cases: (routing, D)."""
    if name == "one_token":
        return token_choice(1, 4, 4, gen), 8
    if name == "idle_experts":  # experts 1, 2 and 4 get nothing
        return routing_from([0, 1, 2, 3, 4, 5], [0, 3, 0, 3, 3, 0], 6, 5, gen=gen), 8
    if name == "all_on_one_expert":
        return routing_from(torch.arange(5), [2] * 5, 5, 4, gen=gen), 8
    if name == "k_equals_e":
        return token_choice(5, 3, 3, gen), 4
    if name == "some_dropped":
        return drop(token_choice(6, 4, 2, gen), 0.4, gen), 8
    if name == "all_dropped":
        return drop(token_choice(4, 3, 2, gen), 1.0, gen), 4
    if name == "expert_choice":  # 3 experts x 2 tokens over 6 tokens: some tokens get none
        return expert_choice(6, 3, 2, gen), 8
    if name == "no_assignments":
        return routing_from([], [], 3, 2, gen=gen), 4
    if name == "odd_dims":  # strides that are not 16-byte aligned: grouped_mm's fallback
        return token_choice(5, 3, 2, gen), 6
    raise AssertionError(name)


CASES = ["one_token", "idle_experts", "all_on_one_expert", "k_equals_e", "some_dropped", "all_dropped",
         "expert_choice", "no_assignments", "odd_dims"]


# --- running and comparing ---------------------------------------------------------------------

def make_weights(E: int, D: int, Fh: int, activation: str, dtype: torch.dtype, gen: torch.Generator):
    w_in_EID = (torch.randn(E, in_rows(Fh, activation), D, generator=gen) / D**0.5).to(dtype)
    w_out_EDF = (torch.randn(E, D, Fh, generator=gen) / Fh**0.5).to(dtype)
    return w_in_EID, w_out_EDF


def run_with_grads(run, x_TD, routing: Routing, w_in_EID, w_out_EDF, activation: str, g_TD):
    """Output and the gradients of sum(y * g) w.r.t. x, w_in, w_out and weight_A."""
    leaves = [t.detach().clone().requires_grad_(True) for t in (x_TD, w_in_EID, w_out_EDF, routing.weight_A)]
    x, w_in, w_out, weight_A = leaves
    r = Routing(routing.token_A, routing.expert_A, weight_A, routing.kept_A, routing.n_tokens, routing.n_experts,
                capacity=routing.capacity)
    y_TD = run(x, r, w_in, w_out, activation)
    # 0 * sum(leaf) keeps every leaf in the graph, so "no gradient" compares as zeros on both sides.
    loss = (y_TD.float() * g_TD).sum() + sum(0 * leaf.float().sum() for leaf in leaves)
    return y_TD, torch.autograd.grad(loss, leaves)


def compare_to_loop(name: str, routing: Routing, D: int, Fh: int, activation: str, dtype: torch.dtype,
                    seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    w_in_EID, w_out_EDF = make_weights(routing.n_experts, D, Fh, activation, dtype, gen)
    x_TD = torch.randn(routing.n_tokens, D, generator=gen).to(dtype)
    g_TD = torch.randn(routing.n_tokens, D, generator=gen)
    backend = get_backend(name)
    if routing.capacity is None and not backend.supports_dropless:
        return
    if routing.capacity is not None and not backend.supports_capacity:
        return
    y_ref, grads_ref = run_with_grads(run_loop, x_TD, routing, w_in_EID, w_out_EDF, activation, g_TD)
    y, grads = run_with_grads(backend.run, x_TD, routing, w_in_EID, w_out_EDF, activation, g_TD)
    assert y.dtype == x_TD.dtype and y.shape == x_TD.shape
    assert_close_scaled(y, y_ref, dtype, f"{name} output")
    for what, got, want in zip(("x", "w_in", "w_out", "weight_A"), grads, grads_ref, strict=True):
        assert_close_scaled(got, want, dtype, f"{name} grad {what}")


# --- tests ---------------------------------------------------------------------------------------

def test_registry_holds_every_backend_name():
    assert set(BACKENDS) == set(BACKEND_NAMES)
    for name, backend in BACKENDS.items():
        assert backend.name == name and backend.description
        assert not (backend.graph_capturable and backend.host_syncs), f"{name}: a host sync cannot be captured"
        if name == "loop" or name in OTHER_BACKENDS:
            backend.check(LayerSpec(backend=name, capacity_factor=None if backend.supports_dropless else 1.0))
        else:  # a backend this machine cannot run must say so at check time, not at the first forward
            assert not runs_here(name)
    with pytest.raises(ValueError, match="valid backends are"):
        get_backend("einsum")


def test_loop_matches_a_per_assignment_sum():
    gen = torch.Generator().manual_seed(1)
    routing = drop(free_form(5, 3, 9, gen), 0.3, gen)
    w_in, w_out = make_weights(3, 4, 3, "swiglu", torch.float32, gen)
    x = torch.randn(5, 4, generator=gen)
    want = torch.zeros(5, 4)
    for a in range(routing.n_assignments):
        if routing.kept_A[a]:
            t, e = routing.token_A[a], routing.expert_A[a]
            want[t] += routing.weight_A[a] * ffn(x[t], w_in[e], w_out[e], "swiglu")
    assert_close_scaled(run_loop(x, routing, w_in, w_out, "swiglu"), want, torch.float32, "loop")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", OTHER_BACKENDS)
def test_edge_cases_match_loop(name, case, dtype):
    routing, D = _case(case, torch.Generator().manual_seed(len(case)))
    for slack in (None, 0, 2):  # dropless, capacity exactly the kept load, capacity with room to spare
        compare_to_loop(name, with_capacity(routing, slack), D, 4, "swiglu", dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("name", OTHER_BACKENDS)
def test_each_activation_matches_loop(name, activation, dtype):
    for case in ("some_dropped", "expert_choice", "odd_dims"):
        routing, D = _case(case, torch.Generator().manual_seed(len(case)))
        for slack in (None, 1):
            compare_to_loop(name, with_capacity(routing, slack), D, 4, activation, dtype)


@st.composite
def routings(draw):
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    T, E = draw(st.integers(1, 6)), draw(st.integers(1, 5))
    kind = draw(st.sampled_from(["token_choice", "expert_choice", "free_form"]))
    if kind == "token_choice":
        routing = token_choice(T, E, draw(st.integers(1, E)), gen)
    elif kind == "expert_choice":
        routing = expert_choice(T, E, draw(st.integers(0, T)), gen)
    else:
        routing = free_form(T, E, draw(st.integers(0, 2 * T)), gen)
    routing = drop(routing, draw(st.sampled_from([0.0, 0.3, 1.0])), gen)
    return with_capacity(routing, draw(st.sampled_from([None, 0, 1]))), seed


@pytest.mark.parametrize("name", OTHER_BACKENDS)
@settings(max_examples=25, deadline=None)
@given(routing_seed=routings(), D=st.sampled_from([4, 6, 8]), Fh=st.sampled_from([3, 4, 8]),
       activation=st.sampled_from(ACTIVATIONS), dtype=st.sampled_from(DTYPES))
def test_random_routings_match_loop(name, routing_seed, D, Fh, activation, dtype):
    routing, seed = routing_seed
    compare_to_loop(name, routing, D, Fh, activation, dtype, seed)


# --- backend-specific pieces -------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(routing_seed=routings())
def test_padded_slots_are_positions_in_assignment_order(routing_seed):
    routing, _ = routing_seed
    pos_A, load_E = slot_in_expert(routing)
    kept = routing.kept_A
    A = int(kept.sum())
    want = position_in_expert(routing.expert_A[kept], torch.arange(A), routing.n_experts)
    assert torch.equal(pos_A[kept], want)
    assert torch.equal(load_E, torch.bincount(routing.expert_A[kept], minlength=routing.n_experts))


def test_padded_refuses_a_routing_over_its_capacity():
    gen = torch.Generator().manual_seed(2)
    routing = routing_from([0, 1, 2], [1, 1, 1], 3, 2, gen=gen)
    routing.capacity = 2  # expert 1 keeps 3 > 2: the router broke its promise
    w_in, w_out = make_weights(2, 4, 4, "relu", torch.float32, gen)
    with pytest.raises(RuntimeError, match="capacity"):
        run_padded(torch.randn(3, 4), routing, w_in, w_out, "relu")


def _cpu_grouped_mm() -> bool:
    return grouped_mm_module._GROUPED_MM is not None and grouped_mm_module._runs_on_cpu(torch.float32)


@pytest.mark.skipif(not _cpu_grouped_mm(), reason="this torch has no CPU grouped_mm")
def test_grouped_mm_path_choice_and_a_plain_sum_backward():
    """16-byte-aligned row strides take torch grouped_mm; others fall back. Both give loop's gradient,
    also for y.sum(), whose stride-0 gradient grouped_mm's backward rejects if it ever reaches it."""
    gen = torch.Generator().manual_seed(3)
    for D, Fh, dtype, usable in [(4, 4, torch.float32, True), (8, 8, torch.bfloat16, True),
                                 (6, 4, torch.float32, False), (8, 3, torch.float32, False),
                                 (8, 4, torch.bfloat16, False)]:
        w_in, w_out = make_weights(3, D, Fh, "swiglu", dtype, gen)
        x = torch.randn(5, D, generator=gen).to(dtype)
        assert grouped_mm_usable(x, w_in, w_out) is usable, (D, Fh, dtype)
        routing = drop(token_choice(5, 3, 2, gen), 0.2, gen)
        grads = []
        for run in (run_loop, run_grouped_mm):
            leaves = [t.clone().requires_grad_(True) for t in (x, w_in, w_out)]
            run(leaves[0], routing, leaves[1], leaves[2], "swiglu").sum().backward()
            grads.append([leaf.grad for leaf in leaves])
        for got, want in zip(grads[1], grads[0], strict=True):
            assert_close_scaled(got, want, dtype, f"grouped_mm D={D} F={Fh} {dtype}")


@pytest.mark.skipif(not _cpu_grouped_mm(), reason="this torch has no CPU grouped_mm")
def test_grouped_mm_first_call_under_inference_mode_still_uses_grouped_mm():
    """The once-per-process CPU probe needs autograd; a first call under inference_mode must not
    leave it cached as 'unsupported'."""
    gen = torch.Generator().manual_seed(4)
    w_in, w_out = make_weights(3, 4, 4, "gelu", torch.float32, gen)
    x = torch.randn(6, 4, generator=gen)
    routing = token_choice(6, 3, 2, gen)
    grouped_mm_module._runs_on_cpu.cache_clear()
    with torch.inference_mode():
        y = run_grouped_mm(x, routing, w_in, w_out, "gelu")
    assert grouped_mm_usable(x, w_in, w_out)
    assert_close_scaled(y, run_loop(x, routing, w_in, w_out, "gelu"), torch.float32, "inference_mode")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("name", OTHER_BACKENDS)
def test_forward_without_autograd_matches_loop(name, activation, dtype):
    """Backends may take in-place paths when nothing needs a gradient (no_grad, inference_mode,
    or plain tensors): those must give loop's output and leave the inputs untouched."""
    backend = get_backend(name)
    cases = [(case, slack) for case in ("some_dropped", "expert_choice", "odd_dims", "k_equals_e", "idle_experts",
                                        "all_dropped", "no_assignments")
             for slack in (None, 1)]
    for i, (case, slack) in enumerate(cases):
        gen = torch.Generator().manual_seed(10 + i)
        routing, D = _case(case, gen)
        routing = with_capacity(routing, slack)
        if not (backend.supports_capacity if slack is not None else backend.supports_dropless):
            continue
        Fh = (4, 12)[i % 2]  # F < D and F > D: sort_gather scales act or out, whichever is smaller
        w_in, w_out = make_weights(routing.n_experts, D, Fh, activation, dtype, gen)
        x = torch.randn(routing.n_tokens, D, generator=gen).to(dtype)
        inputs = [t.clone() for t in (x, w_in, w_out, routing.weight_A)]
        want = run_loop(x, routing, w_in, w_out, activation)
        for context in (torch.no_grad, torch.inference_mode, torch.enable_grad):
            with context():
                got = backend.run(x, routing, w_in, w_out, activation)
            assert not got.requires_grad
            assert_close_scaled(got, want, dtype, f"{name} {case} {activation} under {context.__name__}")
        for before, after in zip(inputs, (x, w_in, w_out, routing.weight_A), strict=True):
            assert torch.equal(before, after), f"{name} {case}: an input changed"
