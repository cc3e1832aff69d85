"""Synthetic routing distributions: determinism, validity, loads against analytic shares, traces,
forcing logits and parameter validation. Axis legend: T tokens, E experts, K experts per token."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moebench.routing.distributions import (
    DISTRIBUTIONS,
    FORCE_LOGIT,
    describe,
    expected_load_share,
    forcing_logits,
    inclusion_probs,
    load_trace,
    make_distribution,
    record_trace,
)

SYNTHETIC = {"uniform": {}, "balanced": {}, "zipf": {"alpha": 1.1}, "khot": {"h": 5},
             "dirichlet": {"concentration": 0.5}}


def naive_counts(idx_TK: torch.Tensor, E: int) -> list[int]:
    """How many tokens include each expert, counted one token at a time."""
    counts = [0] * E
    for row in idx_TK.tolist():
        for e in set(row):
            counts[e] += 1
    return counts


def assert_valid(idx_TK: torch.Tensor, T: int, E: int, K: int) -> None:
    assert idx_TK.dtype == torch.int64 and tuple(idx_TK.shape) == (T, K)
    for row in idx_TK.tolist():
        assert len(set(row)) == K, row
        assert all(0 <= e < E for e in row), row


def assert_shares_match(counts: list[int], pi_E: torch.Tensor, T: int) -> None:
    """Each count ~ Binomial(T, pi_e) (one draw per token): every z-score under 5, chi-square sane."""
    chi2 = 0.0
    for count, pi in zip(counts, pi_E.tolist(), strict=True):
        if pi >= 1 - 1e-12 or pi <= 1e-12:  # certain either way: no variance
            assert count == round(T * pi), (count, T * pi)
            continue
        var = T * pi * (1 - pi)
        assert abs(count - T * pi) <= 5 * math.sqrt(var) + 1, (count, T * pi)
        chi2 += (count - T * pi) ** 2 / var
    assert chi2 < 3 * len(counts) + 20, chi2  # mean len(counts); 3x it is far in the tail


@pytest.fixture
def trace_path(tmp_path):
    path = tmp_path / "routing.npz"
    steps = [torch.tensor([[0, 1], [2, 3], [1, 3]]), torch.tensor([[3, 2], [0, 2], [1, 0]])]
    record_trace(path, steps, n_experts=4)
    return path, steps


# --- every distribution -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SYNTHETIC))
def test_deterministic_per_seed_and_varies_per_step(name):
    a = make_distribution(name, seed=3, **SYNTHETIC[name])
    b = make_distribution(name, seed=3, **SYNTHETIC[name])
    other = make_distribution(name, seed=4, **SYNTHETIC[name])
    assert torch.equal(a.sample(64, 16, 2, step=5), b.sample(64, 16, 2, step=5))
    assert not torch.equal(a.sample(64, 16, 2, step=5), a.sample(64, 16, 2, step=6))
    assert not torch.equal(a.sample(64, 16, 2, step=5), other.sample(64, 16, 2, step=5))


@pytest.mark.parametrize("name", sorted(SYNTHETIC))
@pytest.mark.parametrize("T,E,K", [(1, 8, 1), (50, 8, 3), (40, 6, 6), (30, 200, 5), (33, 7, 5)])
def test_k_distinct_experts_in_range(name, T, E, K):
    params = dict(SYNTHETIC[name])
    if name == "khot":
        params["h"] = max(K, min(5, E))
    idx_TK = make_distribution(name, seed=1, **params).sample(T, E, K, step=2)
    assert_valid(idx_TK, T, E, K)


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(sorted(SYNTHETIC)), T=st.integers(1, 40), E=st.integers(1, 40), data=st.data())
def test_property_valid(name, T, E, data):
    K = data.draw(st.integers(1, E))
    params = {"zipf": {"alpha": data.draw(st.floats(0, 4))}, "khot": {"h": data.draw(st.integers(K, E))},
              "dirichlet": {"concentration": data.draw(st.floats(1e-3, 10))}}.get(name, {})
    seed, step = data.draw(st.integers(0, 2**32)), data.draw(st.integers(0, 1000))
    assert_valid(make_distribution(name, seed=seed, **params).sample(T, E, K, step=step), T, E, K)


def test_describe_records_name_params_seed(trace_path):
    assert describe(make_distribution("zipf", seed=7, alpha=0.8)) == {"name": "zipf", "params": {"alpha": 0.8},
                                                                      "seed": 7}
    assert describe(make_distribution("uniform")) == {"name": "uniform", "params": {}, "seed": 0}
    info = describe(make_distribution("trace", path=str(trace_path[0])))
    assert info["params"] == {"path": str(trace_path[0])} and len(info["trace_sha256"]) == 64


def test_registry_and_device():
    assert set(DISTRIBUTIONS) == set(SYNTHETIC) | {"trace"}
    assert make_distribution("uniform").sample(4, 4, 2, device="cpu").device.type == "cpu"


# --- loads ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("T,E,K", [(64, 8, 2), (96, 12, 4), (10, 10, 10), (9, 3, 1)])
def test_balanced_loads_exactly_equal(T, E, K):
    dist = make_distribution("balanced", seed=2)
    for step in range(3):
        assert naive_counts(dist.sample(T, E, K, step), E) == [T * K // E] * E


def test_balanced_non_divisible_loads_differ_by_at_most_one():
    T, E, K = 13, 8, 3  # T*K = 39 = 4*8 + 7: seven experts get 5, one gets 4
    dist = make_distribution("balanced", seed=0)
    fuller = []
    for step in range(4):
        counts = naive_counts(dist.sample(T, E, K, step), E)
        assert sorted(counts) == [4] + [5] * 7
        fuller.append(counts.index(4))
    assert len(set(fuller)) > 1  # which expert is short changes with the step


@pytest.mark.parametrize("E,K", [(16, 1), (40, 2)])  # the rejection path (2K^2 <= E)
def test_uniform_shares(E, K):
    T = 4000
    counts = naive_counts(make_distribution("uniform", seed=5).sample(T, E, K), E)
    assert_shares_match(counts, torch.full((E,), K / E, dtype=torch.float64), T)


def test_uniform_shares_dense_path():
    T, E, K = 4000, 8, 3  # 2K^2 > E: the random-topk path
    counts = naive_counts(make_distribution("uniform", seed=5).sample(T, E, K), E)
    assert_shares_match(counts, torch.full((E,), K / E, dtype=torch.float64), T)


def test_zipf_popularity_hand_derived():
    # alpha = 1, E = 4: weights 1, 1/2, 1/3, 1/4, sum 25/12.
    share = expected_load_share("zipf", {"alpha": 1.0}, 4)
    assert torch.allclose(share, torch.tensor([12, 6, 4, 3], dtype=torch.float64) / 25)
    # alpha = 2, E = 3, K = 2: p = (36, 9, 4)/49; K*p_0 = 72/49 > 1, so expert 0 is in every token
    # and the second choice splits 9 : 4 between the others: shares (1, 9/13, 4/13) / 2.
    share = expected_load_share("zipf", {"alpha": 2.0}, 3, K=2)
    assert torch.allclose(share, torch.tensor([1 / 2, 9 / 26, 4 / 26], dtype=torch.float64))
    assert torch.allclose(expected_load_share("zipf", {"alpha": 0}, 5), torch.full((5,), 0.2, dtype=torch.float64))


def naive_inclusion(p: list[float], K: int) -> list[float]:
    """Cap at 1 one expert at a time, most popular first, re-spreading the rest in proportion to p."""
    capped: set[int] = set()
    while True:
        free = [i for i in range(len(p)) if i not in capped]
        rest = sum(p[i] for i in free)
        pi = [1.0 if i in capped else (K - len(capped)) * p[i] / rest for i in range(len(p))]
        over = [i for i in free if pi[i] > 1]
        if not over:
            return pi
        capped.add(max(over, key=lambda i: p[i]))


@settings(max_examples=40, deadline=None)
@given(p=st.lists(st.floats(1e-3, 1.0), min_size=1, max_size=12), data=st.data())
def test_inclusion_probs_against_naive(p, data):
    K = data.draw(st.integers(1, len(p)))
    pi = inclusion_probs(torch.tensor(p), K)
    assert torch.allclose(pi, torch.tensor(naive_inclusion(p, K), dtype=torch.float64), atol=1e-9)
    assert abs(pi.sum().item() - K) < 1e-9 and pi.max().item() <= 1 + 1e-12


@pytest.mark.parametrize("alpha,E,K", [(1.0, 16, 2), (1.5, 12, 3), (0.7, 32, 1)])
def test_zipf_empirical_shares_match_analytic(alpha, E, K):
    """Also shows the shares are p itself for K > 1, not flattened as Gumbel-top-k would make them."""
    T = 12000
    counts = naive_counts(make_distribution("zipf", seed=11, alpha=alpha).sample(T, E, K, step=1), E)
    assert_shares_match(counts, K * expected_load_share("zipf", {"alpha": alpha}, E, K), T)


def test_khot_uses_only_the_hot_set():
    T, E, K, h = 3000, 16, 2, 5
    counts = naive_counts(make_distribution("khot", seed=0, h=h).sample(T, E, K), E)
    assert all(c == 0 for c in counts[h:]) and all(c > 0 for c in counts[:h])
    share = expected_load_share("khot", {"h": h}, E, K)
    assert torch.allclose(share, torch.tensor([1 / h] * h + [0.0] * (E - h), dtype=torch.float64))
    assert_shares_match(counts, K * share, T)


def test_dirichlet_popularity_per_batch():
    dist = make_distribution("dirichlet", seed=2, concentration=0.3)
    p0, p1 = dist.popularity(20, step=0), dist.popularity(20, step=1)
    for p in (p0, p1):
        assert abs(p.sum().item() - 1) < 1e-12 and (p >= 0).all()
    assert not torch.allclose(p0, p1)
    assert torch.equal(p0, make_distribution("dirichlet", seed=2, concentration=0.3).popularity(20, step=0))
    assert p0.max() > 3 / 20  # concentration 0.3 is skewed
    assert expected_load_share("dirichlet", {"concentration": 0.3}, 20) is None


def test_dirichlet_batch_follows_its_popularity():
    T, E, K = 12000, 10, 2
    dist = make_distribution("dirichlet", seed=4, concentration=1.0)
    counts = naive_counts(dist.sample(T, E, K, step=3), E)
    assert_shares_match(counts, inclusion_probs(dist.popularity(E, step=3), K), T)


def test_dirichlet_tiny_concentration_still_valid():
    idx_TK = make_distribution("dirichlet", seed=0, concentration=1e-3).sample(200, 16, 4)
    assert_valid(idx_TK, 200, 16, 4)


def test_uniform_expected_share():
    assert torch.allclose(expected_load_share("uniform", {}, 4), torch.full((4,), 0.25, dtype=torch.float64))


# --- traces ---------------------------------------------------------------------------------------


def test_trace_round_trip_and_replay(trace_path):
    path, steps = trace_path
    loaded, n_experts = load_trace(path)
    assert n_experts == 4 and all(torch.equal(a, b) for a, b in zip(loaded, steps, strict=True)) and len(loaded) == 2
    dist = make_distribution("trace", path=str(path))
    assert torch.equal(dist.sample(3, 4, 2, step=0), steps[0])
    assert torch.equal(dist.sample(3, 4, 2, step=1), steps[1])
    assert torch.equal(dist.sample(3, 4, 2, step=2), steps[0])  # cycles
    stream = torch.cat(steps)
    assert torch.equal(dist.sample(4, 4, 2, step=1), stream[[4, 5, 0, 1]])  # T != recorded: a stream window


def test_trace_variable_batch_sizes(tmp_path):
    path = tmp_path / "t.npz"
    steps = [torch.tensor([[0], [1]]), torch.tensor([[2]], dtype=torch.int32), np.array([[1], [0], [2]])]
    record_trace(path, steps, n_experts=3)
    loaded, _ = load_trace(path)
    assert [s.tolist() for s in loaded] == [[[0], [1]], [[2]], [[1], [0], [2]]]
    assert all(s.dtype == torch.int64 for s in loaded)


def test_trace_replay_mismatch_errors(trace_path):
    path, _ = trace_path
    dist = make_distribution("trace", path=str(path))
    with pytest.raises(ValueError, match=r"routing trace .*routing\.npz: recorded with n_experts=4, top_k=2"):
        dist.sample(3, 8, 2)
    with pytest.raises(ValueError, match="recorded with n_experts=4, top_k=2; cannot replay with n_experts=4, top_k=1"):
        dist.sample(3, 4, 1)
    with pytest.raises(ValueError, match=r"routing\.npz: holds 6 tokens; cannot replay batches of 7"):
        dist.sample(7, 4, 2)


def test_record_trace_rejects_bad_steps(tmp_path):
    path = tmp_path / "bad.npz"
    cases = [
        ([torch.tensor([[0, 4]])], "step 0 token 0 routes to experts \\[0, 4\\]; experts must be in \\[0, 4\\)"),
        ([torch.tensor([[0, 1]]), torch.tensor([[1, -1]])], "step 1 token 0 .*must be in \\[0, 4\\)"),
        ([torch.tensor([[0, 1], [2, 2]])], "step 0 token 1 routes to \\[2, 2\\]; .* must be distinct"),
        ([torch.tensor([[0, 1]]), torch.tensor([[0, 1, 2]])], "step 1 has shape \\[1, 3\\]; .*same K \\(2\\)"),
        ([torch.tensor([0, 1])], "step 0 has shape \\[2\\]"),
        ([torch.tensor([[0.0, 1.0]])], "step 0 has dtype torch.float32; expert indices must be integers"),
        ([], "no steps to record"),
    ]
    for steps, message in cases:
        with pytest.raises(ValueError, match="routing trace .*bad\\.npz: " + message):
            record_trace(path, steps, n_experts=4)
        assert not path.exists() and list(tmp_path.iterdir()) == []  # nothing half-written
    with pytest.raises(ValueError, match="n_experts=0 must be a positive integer"):
        record_trace(path, [torch.tensor([[0]])], n_experts=0)


def test_load_trace_error_messages_name_the_file(tmp_path):
    def write(name, **arrays):
        path = tmp_path / name
        with open(path, "wb") as f:
            np.savez(f, **arrays)
        return path

    good = dict(format=np.array("moebench-routing-trace"), version=np.array(1), n_experts=np.array(4),
                idx_AK=np.array([[0, 1], [2, 3]]), step_offsets=np.array([0, 2]))
    text = tmp_path / "notes.txt"
    text.write_text("not a trace")
    cases = [
        (tmp_path / "absent.npz", "absent.npz: file not found"),
        (text, "notes.txt: not a trace file written by record_trace"),
        (write("nokey.npz", **{k: v for k, v in good.items() if k != "idx_AK"}), "nokey.npz: missing array 'idx_AK'"),
        (write("fmt.npz", **{**good, "format": np.array("other")}), "fmt.npz: format 'other' version 1; expected"),
        (write("float.npz", **{**good, "idx_AK": np.array([[0.0, 1.0]])}), "float.npz: .*must be integers"),
        (write("offs.npz", **{**good, "step_offsets": np.array([0, 3])}), "offs.npz: step_offsets \\[0, 3\\] do not"),
        (write("range.npz", **{**good, "idx_AK": np.array([[0, 1], [2, 9]])}),
         "range.npz: step 0 token 1 routes to experts \\[2, 9\\]; experts must be in \\[0, 4\\)"),
        (write("dup.npz", **{**good, "idx_AK": np.array([[1, 1], [2, 3]])}), "dup.npz: step 0 token 0 .*distinct"),
        (write("ne.npz", **{**good, "n_experts": np.array(0)}), "ne.npz: n_experts=0 must be a positive integer"),
    ]
    for path, message in cases:
        with pytest.raises(ValueError, match="routing trace .*" + message):
            load_trace(path)
        with pytest.raises(ValueError, match="routing trace .*" + message):
            make_distribution("trace", path=str(path))
    assert load_trace(write("ok.npz", **good))[1] == 4


# --- forcing logits --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SYNTHETIC))
def test_forcing_logits_select_exactly_the_requested_experts(name):
    T, E, K = 256, 32, 4
    idx_TK = make_distribution(name, seed=9, **SYNTHETIC[name]).sample(T, E, K)
    gen = torch.Generator().manual_seed(0)
    real_TE = torch.randn(T, E, generator=gen) * 10
    real_TE[::2] = torch.empty(T // 2, E).uniform_(-10, 10, generator=gen)  # O(10) everywhere, extremes too
    forced_TE = real_TE + forcing_logits(idx_TK, E)
    assert forced_TE.dtype == torch.float32
    weight_TK, chosen_TK = torch.softmax(forced_TE, -1).topk(K, dim=-1)
    for t in range(T):
        assert set(chosen_TK[t].tolist()) == set(idx_TK[t].tolist())
    # The router's own numbers survive: the forced weights are softmax of the real logits over the chosen.
    expected_TK = torch.softmax(real_TE.gather(1, chosen_TK), -1)
    assert torch.allclose(weight_TK, expected_TK, atol=5e-3)


def test_forcing_selection_survives_bf16_but_is_documented_fp32():
    T, E, K = 64, 16, 2
    idx_TK = make_distribution("uniform", seed=0).sample(T, E, K)
    real_TE = (torch.randn(T, E, generator=torch.Generator().manual_seed(1)) * 10).bfloat16()
    chosen_TK = (real_TE + forcing_logits(idx_TK, E).bfloat16()).topk(K, dim=-1).indices
    assert all(set(c) == set(i) for c, i in zip(chosen_TK.tolist(), idx_TK.tolist(), strict=True))
    assert FORCE_LOGIT == 1e4 and forcing_logits(idx_TK, E).sum().item() == T * K * FORCE_LOGIT


def test_forcing_logits_rejects_bad_index():
    with pytest.raises(ValueError, match="int64 \\[T, K\\]"):
        forcing_logits(torch.tensor([0, 1]), 4)
    with pytest.raises(ValueError, match="int64 \\[T, K\\]"):
        forcing_logits(torch.tensor([[0.0, 1.0]]), 4)


# --- parameter validation ----------------------------------------------------------------------------


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown routing distribution 'pareto'; valid names are uniform, balanced, "
                                         "zipf, khot, dirichlet, trace"):
        make_distribution("pareto")


@pytest.mark.parametrize("name,params,message", [
    ("zipf", {"beta": 1}, "'zipf' has no parameter 'beta'; allowed parameters are alpha, seed"),
    ("uniform", {"alpha": 1}, "'uniform' has no parameter 'alpha'; allowed parameters are seed"),
    ("khot", {"k": 2}, "'khot' has no parameter 'k'; allowed parameters are h, seed"),
    ("zipf", {"alpha": -0.5}, "'zipf': parameter alpha=-0.5 is invalid: must be a finite number >= 0"),
    ("zipf", {"alpha": "1"}, "'zipf': parameter alpha='1' is invalid"),
    ("zipf", {"alpha": True}, "'zipf': parameter alpha=True is invalid"),
    ("zipf", {"alpha": float("inf")}, "'zipf': parameter alpha=inf is invalid"),
    ("khot", {"h": 0}, "'khot': parameter h=0 is invalid: must be an integer >= 1"),
    ("khot", {"h": 2.0}, "'khot': parameter h=2.0 is invalid: must be an integer >= 1"),
    ("dirichlet", {"concentration": 0}, "'dirichlet': parameter concentration=0 is invalid: must be a finite "
                                        "number > 0"),
    ("uniform", {"seed": -1}, "'uniform': parameter seed=-1 is invalid: must be an integer >= 0"),
    ("balanced", {"seed": 1.5}, "'balanced': parameter seed=1.5 is invalid"),
    ("trace", {}, "'trace': parameter path='' is invalid: must be the path of a trace file"),
    ("trace", {"path": 3}, "'trace': parameter path=3 is invalid"),
])
def test_parameter_validation_messages(name, params, message):
    with pytest.raises(ValueError, match=message.replace("(", "\\(").replace(")", "\\)")):
        make_distribution(name, **params)


def test_sample_time_validation():
    with pytest.raises(ValueError, match="'khot': parameter h=3 is invalid: must satisfy top_k \\(4\\) <= h"):
        make_distribution("khot", h=3).sample(8, 16, 4)
    with pytest.raises(ValueError, match="h <= n_experts \\(4\\)"):
        make_distribution("khot", h=6).sample(8, 4, 2)
    with pytest.raises(ValueError, match="'zipf': parameter top_k=5 is invalid: must be <= n_experts \\(4\\)"):
        make_distribution("zipf").sample(8, 4, 5)
    with pytest.raises(ValueError, match="'uniform': parameter n_tokens=0 is invalid"):
        make_distribution("uniform").sample(0, 4, 1)
    with pytest.raises(ValueError, match="'uniform': parameter step=-1 is invalid"):
        make_distribution("uniform").sample(4, 4, 1, step=-1)
    with pytest.raises(ValueError, match="'khot': parameter h=6 is invalid"):
        expected_load_share("khot", {"h": 6}, 4)
