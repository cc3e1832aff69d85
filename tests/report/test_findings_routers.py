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
    assert balance.text == ("No router is both cheaper and better balanced than top-2; the cheapest is hash at 0.8× "
                            "the time, and the best balanced is expert_choice at load max/mean 1.00.")


def test_a_router_both_cheaper_and_better_balanced_is_named(tmp_path):
    df = frame(tmp_path, [TOP_K, _router({"variant": "sinkhorn"}, 0.009, 1.05),
                          _router({"variant": "hash"}, 0.008, 1.5)], kind="routers")
    _, balance = router_cost_and_balance(df)
    assert balance.text == "Both cheaper and better balanced than top-2: sinkhorn."


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
    assert balance.text.startswith("No router is both cheaper and better balanced than top-2")
