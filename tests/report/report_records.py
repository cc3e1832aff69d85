"""Hand-made results files for the report tests: the record layout moebench.runner writes, with
numbers chosen so each figure has something (or nothing) to draw. Written with the real ResultWriter."""

from __future__ import annotations

from pathlib import Path

from moebench.store import ResultWriter

ENV = {"device": "cpu", "threads": 2, "cpu_model": "Test CPU 9000", "gpu": None,
       "git": {"sha": "0123456789abcdef0123", "dirty": True}, "packages": {"torch": "9.9.9+test"}}


def case(case_id: str, params: dict, *, spec: dict | None = None, metrics: dict | None = None,
         status: str = "ok", error: str | None = None, loads=None, tokens: int = 512) -> dict:
    base_spec = {"variant": "token_choice", "backend": "sort_gather", "d_model": 64, "d_ff": 128,
                 "n_experts": 8, "top_k": 2, "dtype": "float32", "capacity_factor": None, "min_capacity": 0,
                 "drop_policy": "position", "peer_experts": 1024, "peer_heads": 4, "peer_k": 8,
                 "peer_retrieval": "product"}
    base_metrics = {"latency_s": 0.01, "tokens_per_s": tokens / 0.01, "frac_of_ceiling": 0.5,
                    "ceiling_flops_per_s": 2e10, "peak_bytes": 2**20, "weight_bytes": 2**19,
                    "predicted_bytes_moved": 2**22, "predicted_dispatch_bytes": 2**18}
    base_metrics |= {"flops": 1e8, "copy_bandwidth_bytes_per_s": 4e10}  # the roofline's FLOPs and bandwidth
    record = {"type": "case", "case_id": case_id, "params": params, "status": status, "error": error,
              "spec": {**base_spec, **(spec or {})},
              "workload": {"tokens": tokens, "batch": 1, "mode": "forward", "routing": "router"},
              "timing": {"median": 0.01, "p10": 0.009, "p90": 0.012, "ci_low": 0.0095, "ci_high": 0.0105,
                         "n": 10, "threads": 2, "timer": "cpu"},
              "metrics": {**base_metrics, **(metrics or {})} if status == "ok" else {}}
    if loads is not None:
        record["loads"] = loads
    return record


def write_run(path: Path, cases: list[dict], *, kind: str = "mixed", suite: str = "quick",
              run_id: str | None = None, env: dict | None = None) -> Path:
    writer = ResultWriter(path)
    run_id = run_id or path.stem
    writer.append({"type": "run", "run_id": run_id, "suite": suite, "kind": kind,
                   "started": "2026-01-02T03:04:05+00:00", "environment": {**ENV, **(env or {})}})
    for c in cases:
        writer.append({"run_id": run_id, "suite": suite, **c})
    return path


def mixed_cases() -> list[dict]:
    """One case for every figure, a failed case, and a case label that is an XSS attempt."""
    phases = {"phase_router_s": 0.001, "phase_dispatch_s": 0.001, "phase_combine_s": 0.001,
              "phase_experts_s": 0.006}
    return [
        case("variant=token_choice,backend=loop", {"variant": "token_choice", "backend": "loop"},
             loads=[130, 120, 140, 110, 125, 125, 130, 144]),
        case("<script>alert(1)</script>", {"variant": "<script>alert(1)</script>"}),
        case("odd=$^{$", {"variant": "odd=$^{$"}),  # text between two $ is not a matplotlib formula here
        case("granularity=1", {"granularity": 1}, metrics={**phases, "analytic_routing_flop_share": 0.01}),
        case("granularity=8", {"granularity": 8}, spec={"n_experts": 64, "top_k": 16, "d_ff": 16},
             metrics={**phases, "phase_router_s": 0.004, "phase_dispatch_s": 0.002, "phase_combine_s": 0.002,
                      "phase_experts_s": 0.005, "analytic_routing_flop_share": 0.08}),
        case("capacity_factor=1.0", {"capacity_factor": 1.0}, spec={"capacity_factor": 1.0},
             metrics={"drop_rate": 0.05, "expected_drop_rate_uniform": 0.04}),
        case("variant=peer", {"variant": "peer"}, spec={"variant": "peer"},
             metrics={"floor_s": 0.001, "bandwidth_floor_s": 0.002, "ceiling_flops_per_s": None}),
        case("variant=hash", {"variant": "hash"}, status="error",
             error="RuntimeError: <b>boom</b> & more"),
    ]


CAPACITY_FACTORS = (0.5, 0.75, 1.0, 1.1, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0)
ROUTINGS = ("uniform", "balanced", "zipf", "khot", "dirichlet")


def capacity_cases(capacity_factors=CAPACITY_FACTORS, tokens: int = 512) -> list[dict]:
    """A capacity-suite-shaped run of 10 CF x E (8, 64) x K (1, 2) x 5 routings x 2 policies = 400
    cases: each with its kept loads (the routing's load per expert, cut at C = ceil(CF*T*K/E)) and
    the drop rate those loads give."""
    import math
    cases = []
    for cf in capacity_factors:
        for E in (8, 64):
            for K in (1, 2):
                for routing in ROUTINGS:
                    for policy in ("position", "probs"):
                        raw = _routed_loads(routing, E, tokens * K)
                        cap = math.ceil(cf * tokens * K / E)
                        kept = [min(x, cap) for x in raw]
                        params = {"capacity_factor": cf, "n_experts": E, "top_k": K, "routing": routing,
                                  "drop_policy": policy}
                        record = case(",".join(f"{k}={v}" for k, v in params.items()), params, tokens=tokens,
                                      spec={"capacity_factor": cf, "n_experts": E, "top_k": K, "drop_policy": policy,
                                            "backend": "padded"},
                                      metrics={"drop_rate": 1 - sum(kept) / (tokens * K)}, loads=kept)
                        record["workload"]["routing"] = routing
                        cases.append(record)
    return cases


def _routed_loads(routing: str, E: int, assignments: int) -> list[int]:
    """Assignments per expert a routing distribution gives (shaped like the suite's, not sampled)."""
    weight = {"uniform": lambda i: 1.0, "balanced": lambda i: 1.0, "zipf": lambda i: 1.0 / (i + 1),
              "khot": lambda i: 4.0 if i < 2 else 1.0, "dirichlet": lambda i: 1.0 + (i * 7919 % 13) / 6}[routing]
    w = [weight(i) for i in range(E)]
    loads = [int(assignments * x / sum(w)) for x in w]
    loads[0] += assignments - sum(loads)
    return loads
