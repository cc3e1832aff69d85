"""Router findings: each router's cost and balance against plain top-k token choice, by hand count."""

from __future__ import annotations

from findings_records import frame, timed

from moebench.report.findings.routers import router_cost_and_balance


def _router(params: dict, latency: float, balance: float, spec: dict | None = None) -> dict:
    case_id = ",".join(f"{k}={v}" for k, v in params.items())
    return timed(case_id, params, latency, spec={**params, **(spec or {})},
                 metrics={"load_max_over_mean": balance})


TOP_K = _router({"variant": "token_choice"}, 0.010, 1.20)


def test_each_router_is_priced_and_balanced_against_plain_top_k(tmp_path):
    df = frame(tmp_path, [
        TOP_K,
        _router({"variant": "token_choice", "noisy_gating": True}, 0.011, 1.10),
        _router({"variant": "hash"}, 0.008, 1.50),
        _router({"variant": "expert_choice"}, 0.012, 1.00),
    ], kind="routers")
    cost, balance = router_cost_and_balance(df)
    # hash 0.008/0.010 = 0.8x, noisy 1.1x, expert choice 1.2x, cheapest first
    assert cost.text == ("Against plain top-2 token choice (10 ms per step, load max/mean 1.20): hash: 0.8× the "
                         "time, load max/mean 1.50; token_choice (noisy_gating=True): 1.1× the time, load max/mean "
                         "1.10; expert_choice: 1.2× the time, load max/mean 1.00.")
    assert cost.figure == "throughput" and balance.figure == "expert_load"
    # expert choice (1.00 by construction) is left out of the verdict: the best balanced judged is noisy top-k
    assert balance.text == ("Among the routers with top-2 that drop nothing and are not balanced by construction, "
                            "none is both cheaper and better balanced than top-2; the cheapest is hash at 0.8× the "
                            "time, and the best balanced is token_choice (noisy_gating=True) at load max/mean 1.10. "
                            "Left out of this verdict: balanced by construction: expert_choice.")


def test_a_router_both_cheaper_and_better_balanced_is_named(tmp_path):
    df = frame(tmp_path, [TOP_K, _router({"variant": "sinkhorn"}, 0.009, 1.05),
                          _router({"variant": "hash"}, 0.008, 1.5)], kind="routers")
    _, balance = router_cost_and_balance(df)
    assert balance.text == ("Among the routers with top-2 that drop nothing and are not balanced by construction, "
                            "both cheaper and better balanced than top-2: sinkhorn.")


def test_routers_are_compared_only_with_top_k_on_the_same_backend(tmp_path):
    other_backend = _router({"variant": "hash", "backend": "loop"}, 0.001, 1.0)
    df = frame(tmp_path, [TOP_K, other_backend], kind="routers")
    (finding,) = router_cost_and_balance(df)
    assert not finding.answered and "no plain top-k token_choice case ran beside another router" in finding.text


def test_without_top_k_the_routers_are_not_compared(tmp_path):
    df = frame(tmp_path, [_router({"variant": "hash"}, 0.008, 1.5),
                          _router({"variant": "token_choice", "capacity_factor": 1.25}, 0.01, 1.0)], kind="routers")
    (finding,) = router_cost_and_balance(df)
    assert not finding.answered and finding.text.startswith("Routers are not compared with top-k")


def test_a_balance_equal_to_top_k_as_printed_is_not_called_better(tmp_path):
    df = frame(tmp_path, [TOP_K, _router({"variant": "gshard"}, 0.005, 1.198)], kind="routers")  # prints 1.20
    cost, balance = router_cost_and_balance(df)
    assert "gshard: 0.5× the time, load max/mean 1.20" in cost.text
    assert "none is both cheaper and better balanced than top-2" in balance.text


def test_a_top_1_or_dropping_router_is_named_as_such_and_left_out_of_the_verdict(tmp_path):
    switch = _router({"variant": "token_choice", "top_k": 1, "capacity_factor": 1.25}, 0.004, 1.05)
    switch["metrics"]["drop_rate"] = 0.0
    gshard = _router({"variant": "gshard", "capacity_factor": 1.25}, 0.006, 1.02)
    gshard["metrics"]["drop_rate"] = 0.031
    df = frame(tmp_path, [TOP_K, switch, gshard, _router({"variant": "hash"}, 0.008, 1.5)], kind="routers")
    cost, balance = router_cost_and_balance(df)
    # the top-1 layer computes half the expert FLOPs; gshard's kept loads are even by its cap
    assert cost.text == ("Against plain top-2 token choice (10 ms per step, load max/mean 1.20): token_choice "
                         "(capacity_factor=1.25), top-1: 0.4× the time, load max/mean 1.05; gshard (capacity_factor="
                         "1.25): 0.6× the time, load max/mean 1.02, drops 3.1% of assignments; hash: 0.8× the time, "
                         "load max/mean 1.50.")
    assert balance.text == ("Among the routers with top-2 that drop nothing and are not balanced by construction, "
                            "none is both cheaper and better balanced than top-2; the cheapest is hash at 0.8× the "
                            "time, and the best balanced is hash at load max/mean 1.50. Left out of this verdict: "
                            "top-1 (other expert FLOPs per token): token_choice (capacity_factor=1.25); drops "
                            "assignments (its load is measured after capacity): gshard (capacity_factor=1.25).")


def test_with_every_router_left_out_no_verdict_is_given(tmp_path):
    df = frame(tmp_path, [TOP_K, _router({"variant": "expert_choice"}, 0.005, 1.0),
                          _router({"variant": "rl", "top_k": 1}, 0.004, 1.1)], kind="routers")
    _, balance = router_cost_and_balance(df)
    assert not balance.answered
    assert balance.text == ("No router is judged both on cost and balance against top-2: every one differs from it "
                            "by more than its router. Left out of this verdict: top-1 (other expert FLOPs per token): "
                            "rl; balanced by construction: expert_choice.")


def test_a_router_with_shared_experts_is_left_out_of_the_verdict(tmp_path):
    # DeepSeek's shared expert adds expert FLOPs per token: its cost is not its router's alone
    deepseek = _router({"variant": "deepseek", "n_shared": 1}, 0.009, 1.05)
    df = frame(tmp_path, [TOP_K, deepseek, _router({"variant": "hash"}, 0.008, 1.5)], kind="routers")
    _, balance = router_cost_and_balance(df)
    assert "both cheaper and better balanced than top-2: deepseek" not in balance.text
    assert balance.text.endswith("Left out of this verdict: shared experts (other expert FLOPs per token): "
                                 "deepseek (n_shared=1).")
