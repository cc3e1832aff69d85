"""Router findings: each router's cost and balance against plain top-k token choice.

Cost is the median step latency over top-k's (metric `latency_s`); balance is the busiest expert's
load over the mean (`load_max_over_mean`, 1 = perfectly even), measured on the loads the experts kept,
after capacity. Plain top-k is `token_choice` without noisy gating, capacity, granularity or a preset.
A router is compared only with the top-k case of the same run, dtype, T, mode, d_model, number of
experts, workload routing and backend. Its top-k is named where it differs from the reference's (a
top-1 layer computes half a top-2 layer's expert FLOPs) and its `drop_rate` where above 0.

The verdict "both cheaper and better balanced" is given only among routers that differ from top-k by
their router alone: the same top_k and shared experts, no assignment dropped (a capped layer's kept loads are even by
the cap) and not balanced by construction (expert choice gives every expert the same load). The
routers left out of it are named with the reason."""

from __future__ import annotations

import math

import pandas as pd

from moebench.report.data import column, ok_cases
from moebench.report.findings.base import Finding
from moebench.report.findings.describe import (
    case_name,
    conditions,
    param,
    percent,
    ratio,
    seconds,
    several_runs,
    text,
)

GROUP_KEYS = ("run", "spec.dtype", "workload.tokens", "workload.batch", "workload.mode", "spec.d_model",
              "spec.n_experts", "workload.routing", "spec.backend")
ROUTED_OUT = ("dense", "peer")  # no router to compare
BALANCED_BY_CONSTRUCTION = ("expert_choice",)  # every expert takes the same number of tokens


def plain_top_k(rows: pd.DataFrame) -> pd.Series:
    """True for plain top-k token choice: the reference every other router is measured against."""
    capacity = column(rows, "spec.capacity_factor")
    noisy = text(rows, "spec.noisy_gating", "False").str.lower() == "true"
    return (text(rows, "spec.variant") == "token_choice") & ~noisy & capacity.isna() & ~_other_layer(rows)


def _other_layer(rows: pd.DataFrame) -> pd.Series:
    """A model preset, a granularity or a dense baseline: another layer, not another router."""
    return param(rows, "granularity").notna() | param(rows, "preset").notna() | param(rows, "baseline").notna()


def router_cost_and_balance(df: pd.DataFrame) -> list[Finding]:
    """One or two sentences per group holding top-k and another router: the cost and balance of
    each, and which routers (same top-k, no drops, not balanced by construction) are both cheaper and
    better balanced than top-k."""
    if df.empty:
        return []
    rows = ok_cases(df)
    rows = rows[column(rows, "latency_s") > 0]
    rows = rows[~text(rows, "spec.variant").isin(ROUTED_OUT) & param(rows, "baseline").isna()].copy()
    for key in GROUP_KEYS:
        rows[f"key {key}"] = text(rows, key, "?")
    found = []
    for _, group in rows.groupby([f"key {k}" for k in GROUP_KEYS], sort=False):
        reference = group[plain_top_k(group)]
        others = group[~plain_top_k(group) & ~_other_layer(group)]
        if reference.empty or others.empty:
            continue
        found += _comparison(reference.iloc[0], others, several_runs(df))
    if not found:
        why = ("no case finished" if rows.empty else
               "no plain top-k token_choice case ran beside another router under the same conditions")
        return [Finding(f"Routers are not compared with top-k: {why}.", "throughput", answered=False)]
    return found


def _comparison(top_k: pd.Series, others: pd.DataFrame, name_run: bool) -> list[Finding]:
    base_latency = float(top_k["latency_s"])
    base_balance = _balance(top_k)
    cost = column(others, "latency_s") / base_latency
    balance = column(others, "load_max_over_mean")
    order = cost.sort_values().index
    k = int(top_k.get("spec.top_k") or 0) or "k"
    names = {i: _name(others.loc[i]) for i in order}
    parts = [f"{names[i]}{_unlike_top_k(others.loc[i], top_k)}: {ratio(cost[i])} the time, load max/mean "
             f"{_fmt_balance(balance[i])}{_drops(others.loc[i])}" for i in order]
    cond = conditions(pd.concat([top_k.to_frame().T, others]), name_run)
    first = Finding(f"Against plain top-{k} token choice ({seconds(base_latency)} per step, load max/mean "
                    f"{_fmt_balance(base_balance)}): " + "; ".join(parts) + ".", "throughput", cond)
    if not math.isfinite(base_balance):
        return [first, Finding(f"Balance is not judged against top-{k}: its case records no load_max_over_mean.",
                               "expert_load", cond, answered=False)]
    reasons = {i: _left_out(others.loc[i], top_k) for i in order}
    judged = [i for i in order if reasons[i] is None]
    left_out = "; ".join(f"{reason}: {', '.join(names[i] for i in order if reasons[i] == reason)}"
                         for reason in dict.fromkeys(r for r in reasons.values() if r is not None))
    tail = f" Left out of this verdict: {left_out}." if left_out else ""
    if not judged:
        return [first, Finding(f"No router is judged both on cost and balance against top-{k}: every one differs "
                               f"from it by more than its router.{tail}", "expert_load", cond, answered=False)]
    among = f"Among the routers with top-{k} that drop nothing and are not balanced by construction"
    # judged on the numbers as printed: "1.12 is better balanced than 1.12" would read as false
    better = [i for i in judged if float(f"{cost[i]:.3g}") < 1 and round(balance[i], 2) < round(base_balance, 2)]
    if better:
        second = f"{among}, both cheaper and better balanced than top-{k}: {', '.join(names[i] for i in better)}."
    else:
        cheapest = judged[0]
        second = (f"{among}, none is both cheaper and better balanced than top-{k}; the cheapest is "
                  f"{names[cheapest]} at {ratio(cost[cheapest])} the time")
        judged_balance = balance[judged]
        if judged_balance.notna().any():
            evenest = judged_balance.idxmin()
            second += f", and the best balanced is {names[evenest]} at load max/mean {_fmt_balance(balance[evenest])}"
        second += "."
    return [first, Finding(second + tail, "expert_load", cond)]


def _name(row: pd.Series) -> str:
    """The case's name without backend and top_k: the top-k is said apart, where it differs."""
    return case_name(row["case_params"], ("backend", "top_k"))


def _top_k(row: pd.Series) -> float:
    value = pd.to_numeric(pd.Series([row.get("spec.top_k")]), errors="coerce").iloc[0]
    return float(value) if pd.notna(value) else math.nan


def _drop_rate(row: pd.Series) -> float:
    value = pd.to_numeric(pd.Series([row.get("drop_rate")]), errors="coerce").iloc[0]
    return float(value) if pd.notna(value) else 0.0  # no drop_rate recorded: nothing was capped


def _unlike_top_k(row: pd.Series, top_k: pd.Series) -> str:
    """', top-1' where the router's top_k is not the reference's."""
    k = _top_k(row)
    return f", top-{int(k)}" if math.isfinite(k) and k != _top_k(top_k) else ""


def _drops(row: pd.Series) -> str:
    rate = _drop_rate(row)
    return f", drops {percent(rate)} of assignments" if rate > 0 else ""


def _left_out(row: pd.Series, top_k: pd.Series) -> str | None:
    """Why a router's cost and balance cannot be set against top-k's, or None when they can."""
    k = _top_k(row)
    if not (math.isfinite(k) and k == _top_k(top_k)):
        return f"top-{int(k) if math.isfinite(k) else '?'} (other expert FLOPs per token)"
    if _shared_experts(row) != _shared_experts(top_k):
        return "shared experts (other expert FLOPs per token)"
    if _drop_rate(row) > 0:
        return "drops assignments (its load is measured after capacity)"
    if str(row.get("spec.variant")) in BALANCED_BY_CONSTRUCTION:
        return "balanced by construction"
    return None


def _shared_experts(row: pd.Series) -> float:
    value = pd.to_numeric(pd.Series([row.get("spec.n_shared")]), errors="coerce").iloc[0]
    return float(value) if pd.notna(value) else 0.0


def _balance(row: pd.Series) -> float:
    value = pd.to_numeric(pd.Series([row.get("load_max_over_mean")]), errors="coerce").iloc[0]
    return float(value) if pd.notna(value) else math.nan


def _fmt_balance(value: float) -> str:
    return f"{value:.2f}" if math.isfinite(value) else "?"
