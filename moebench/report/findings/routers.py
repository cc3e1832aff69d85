"""Router findings: each router's cost and balance against plain top-k token choice.

Cost is the median step latency over top-k's (metric `latency_s`); balance is the busiest expert's
computed load over the mean (`load_max_over_mean`, 1 = perfectly even). Plain top-k is `token_choice`
without noisy gating, capacity, granularity or a preset. A router is compared only with the top-k
case of the same run, dtype, T, mode, d_model, number of experts, workload routing and backend, so
the two differ by their router alone."""

from __future__ import annotations

import math

import pandas as pd

from moebench.report.data import column, ok_cases
from moebench.report.findings.base import Finding
from moebench.report.findings.describe import case_name, conditions, param, ratio, seconds, several_runs, text

GROUP_KEYS = ("run", "spec.dtype", "workload.tokens", "workload.mode", "spec.d_model", "spec.n_experts",
              "workload.routing", "spec.backend")
ROUTED_OUT = ("dense", "peer")  # no router to compare


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
    each, and which routers are both cheaper and better balanced than top-k."""
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
    drop = ("backend",)
    parts = [f"{case_name(others.at[i, 'case_params'], drop)}: {ratio(cost[i])} the time, load max/mean "
             f"{_fmt_balance(balance[i])}" for i in order]
    k = int(top_k.get("spec.top_k") or 0) or "k"
    cond = conditions(pd.concat([top_k.to_frame().T, others]), name_run)
    first = Finding(f"Against plain top-{k} token choice ({seconds(base_latency)} per step, load max/mean "
                    f"{_fmt_balance(base_balance)}): " + "; ".join(parts) + ".", "throughput", cond)
    # judged on the numbers as printed: "1.12 is better balanced than 1.12" would read as false
    if not math.isfinite(base_balance):
        return [first, Finding(f"Balance is not judged against top-{k}: its case records no load_max_over_mean.",
                               "expert_load", cond, answered=False)]
    better = [i for i in order if float(f"{cost[i]:.3g}") < 1 and round(balance[i], 2) < round(base_balance, 2)]
    if better:
        names = ", ".join(case_name(others.at[i, "case_params"], drop) for i in better)
        second = f"Both cheaper and better balanced than top-{k}: {names}."
    else:
        cheapest = order[0]
        evenest = balance.idxmin() if balance.notna().any() else None
        second = (f"No router is both cheaper and better balanced than top-{k}; the cheapest is "
                  f"{case_name(others.at[cheapest, 'case_params'], drop)} at {ratio(cost[cheapest])} the time")
        if evenest is not None:
            second += (f", and the best balanced is {case_name(others.at[evenest, 'case_params'], drop)} at "
                       f"load max/mean {_fmt_balance(balance[evenest])}")
        second += "."
    return [first, Finding(second, "expert_load", cond)]


def _balance(row: pd.Series) -> float:
    value = pd.to_numeric(pd.Series([row.get("load_max_over_mean")]), errors="coerce").iloc[0]
    return float(value) if pd.notna(value) else math.nan


def _fmt_balance(value: float) -> str:
    return f"{value:.2f}" if math.isfinite(value) else "?"
