"""Throughput findings: per model width, dtype, mode and T, the fastest routed layer and its speed
relative to the dense FFN of equal active parameters (suite axis `baseline: equal_active`, a plain FFN
of width K·F: the FLOPs per token of the routed layer without its routing); and, for the ci and quick
suites, the spread between the fastest and the slowest hot path.

A hot path is a layer's forward (or backward) path as a user would run it: a routed layer, never a dense
baseline. In a run of kind ci every routed case is one (the ci suite forces a deterministic uniform
routing on the layers whose speed does not depend on their router, to keep the gate stable); in any
other run (quick) a case under a forced synthetic routing (uniform, zipf: a drop study) is not, since
its speed is not its router's.

Speeds are tokens/s at the median step latency (metric `tokens_per_s`). A routed layer is compared with
the dense baseline of the same run, dtype, T, mode, d_model and active width (K·F plus its shared experts'
width: a top-1 layer is not compared with a top-2 layer's dense FFN). The dense FFN has no routing; the
routed layers are also grouped by workload routing (a synthetic routing is not the router's speed)."""

from __future__ import annotations

import pandas as pd

from moebench.report.data import column, ok_cases
from moebench.report.findings.base import Finding
from moebench.report.findings.describe import (
    case_name,
    conditions,
    param,
    rate,
    ratio,
    seconds,
    several_runs,
    situation,
    text,
)

CONDITION_KEYS = ("run", "spec.dtype", "workload.tokens", "workload.batch", "workload.mode", "spec.d_model")
MATCH_KEYS = (*CONDITION_KEYS, "active width")  # a routed layer and its equal-active dense FFN share these
FIGURE = "throughput"


def keyed(df: pd.DataFrame) -> pd.DataFrame:
    """The finished cases with a speed, with text columns to group on and `dense` marking baselines."""
    rows = ok_cases(df)
    rows = rows[(column(rows, "tokens_per_s") > 0) & (column(rows, "latency_s") > 0)].copy()
    for key in (*CONDITION_KEYS, "workload.routing"):
        rows[f"key {key}"] = text(rows, key, "?")
    rows["baseline"] = param(rows, "baseline")
    rows["dense"] = rows["baseline"].notna() | (text(rows, "spec.variant") == "dense")
    rows["peer"] = text(rows, "spec.variant") == "peer"  # memory-bound retrieval: not a dispatch backend
    width = active_width(rows).where(~rows["dense"], column(rows, "spec.d_ff"))
    rows["key active width"] = width.map(lambda w: f"{w:.0f}" if pd.notna(w) else "?")
    return rows


def active_width(rows: pd.DataFrame) -> pd.Series:
    """The FFN width each token passes through: K·F + shared·F_shared, the d_ff of the equal-active dense
    FFN the suite builds (suite.py, baseline). A top-1 layer beside a top-2 baseline is not equal-active."""
    d_ff = column(rows, "spec.d_ff")
    shared = column(rows, "spec.shared_d_ff").fillna(d_ff)
    return column(rows, "spec.top_k") * d_ff + column(rows, "spec.n_shared").fillna(0) * shared


def fastest_backend(df: pd.DataFrame) -> list[Finding]:
    """Per (run, dtype, T, mode, d_model, active width, routing): the fastest routed layer, and its ratio to
    the dense FFN of equal active parameters at the same run, dtype, T, mode and d_model when one ran."""
    if df.empty:
        return []
    rows = keyed(df)
    if rows.empty:
        return [Finding("No case finished with a speed, so no layer is the fastest.", FIGURE, answered=False)]
    routed = rows[~rows["dense"] & ~rows["peer"]]
    routed = _router_routed(routed)
    baselines = rows[rows["baseline"] == "equal_active"]
    name_run = several_runs(df)
    found = []
    group_keys = [f"key {k}" for k in (*MATCH_KEYS, "workload.routing")]
    for key, group in routed.groupby(group_keys, sort=False):
        best = group.loc[column(group, "tokens_per_s").idxmax()]
        match = baselines
        for k, value in zip(MATCH_KEYS, key, strict=False):
            match = match[match[f"key {k}"] == value]
        if len(group) > 1 or not match.empty:  # one layer and no baseline: nothing to compare it with
            found.append(_fastest_sentence(group, best, match, name_run))
    if not found and not routed.empty:
        found.append(Finding("No two routed layers and no routed layer beside a dense baseline ran under the "
                             "same dtype, T, mode and d_model, so no layer is compared.", FIGURE,
                             conditions(routed, name_run), answered=False))
    runs_without = sorted(set(routed["run"]) - set(baselines["run"]))
    for run in runs_without:
        where = f" in run {run}" if name_run else ""
        found.append(Finding(f"No dense FFN of equal active parameters (suite axis baseline: equal_active) "
                             f"ran{where}, so no routed layer is compared with one.", FIGURE, answered=False))
    return found


def _router_routed(routed: pd.DataFrame) -> pd.DataFrame:
    """The cases routed by their router, when there are any: a synthetic routing (uniform, zipf: a
    capacity or drop study) is not the layer's own speed."""
    by_router = routed[routed["key workload.routing"].isin(["router", "?"])]
    return by_router if not by_router.empty else routed


def _fastest_sentence(group: pd.DataFrame, best: pd.Series, baselines: pd.DataFrame, name_run: bool) -> Finding:
    head = f"{situation(best)}, d_model {best['key spec.d_model']}"
    if best["key workload.routing"] not in ("router", "?"):
        head += f", {best['key workload.routing']} routing"
    speed = float(best["tokens_per_s"])
    width = f" with active width {best['key active width']} (K·F + shared)" if not baselines.empty else ""
    speeds = column(group, "tokens_per_s")
    if len(group) > 1 and rate(speeds.min()) == rate(speeds.max()):  # equal as printed: none is the fastest
        sentence = f"{head}: the {len(group)} routed layers{width} tie at {rate(speed)}"
    else:
        of = f"the fastest of {len(group)} routed layers{width}" if len(group) > 1 else f"the only routed layer{width}"
        sentence = f"{head}: {of} is {case_name(best['case_params'])} at {rate(speed)}"
    rows = group
    if not baselines.empty:
        dense = baselines.loc[column(baselines, "tokens_per_s").idxmax()]
        sentence += (f", {ratio(speed / float(dense['tokens_per_s']))} the dense FFN of equal active parameters "
                     f"({rate(float(dense['tokens_per_s']))})")
        rows = pd.concat([group, baselines.loc[[dense.name]]])
    elif len(group) > 1 and rate(speeds.min()) != rate(speeds.max()):
        slowest = group.loc[column(group, "tokens_per_s").idxmin()]
        sentence += (f"; the slowest, {case_name(slowest['case_params'])}, reaches "
                     f"{rate(float(slowest['tokens_per_s']))}")
    return Finding(sentence + ".", FIGURE, conditions(rows, name_run))


def hot_path_spread(df: pd.DataFrame) -> list[Finding]:
    """Per (run, dtype, T, mode): the fastest and the slowest hot path by median latency, and their
    ratio (or that they tie). The layers differ (that is the point of a ci or quick suite); the ratio
    says how far apart the hot paths are on this machine."""
    if df.empty:
        return []
    rows = ok_cases(df)
    rows = rows[column(rows, "latency_s") > 0].copy()
    keys = [k for k in CONDITION_KEYS if k != "spec.d_model"]
    for key in keys:
        rows[f"key {key}"] = text(rows, key, "?")
    rows["hot path"] = hot_paths(rows)
    groups = [g for _, g in rows.groupby([f"key {k}" for k in keys], sort=False) if g["hot path"].sum() > 1]
    if not groups:
        n_ok = int(rows["hot path"].sum())
        why = "no hot path finished" if n_ok == 0 else "no two hot paths finished under the same dtype, T and mode"
        return [Finding(f"The spread between hot paths is not computed: {why}.", FIGURE, answered=False)]
    name_run = several_runs(df)
    return [_spread_sentence(g, name_run) for g in groups]


def hot_paths(rows: pd.DataFrame) -> pd.Series:
    """True for a hot path (module docstring): a routed layer, under its own router unless its run is of
    kind ci."""
    dense = param(rows, "baseline").notna() | (text(rows, "spec.variant") == "dense")
    forced = ~text(rows, "workload.routing", "router").isin(["router"])
    return ~dense & (~forced | (text(rows, "kind") == "ci"))


def _spread_sentence(group: pd.DataFrame, name_run: bool) -> Finding:
    hot = group[group["hot path"]]
    latency = column(hot, "latency_s")
    fast, slow = hot.loc[latency.idxmin()], hot.loc[latency.idxmax()]
    head = f"{situation(hot.iloc[0])}: of {len(hot)} hot paths{_left_out(group)}"
    spread = float(slow["latency_s"]) / float(fast["latency_s"])
    if ratio(spread) == ratio(1.0):  # as printed, the slowest is no slower: a tie, not one case named twice
        sentence = f"{head} all take {seconds(float(fast['latency_s']))} per step: they tie."
    else:
        sentence = (f"{head} the fastest is {case_name(fast['case_params'])} at {seconds(float(fast['latency_s']))} "
                    f"per step and the slowest is {case_name(slow['case_params'])} at "
                    f"{seconds(float(slow['latency_s']))}, {ratio(spread)} the fastest.")
    return Finding(sentence, FIGURE, conditions(hot, name_run))


def _left_out(group: pd.DataFrame) -> str:
    """' (2 dense baselines and 1 forced-routing case left out)', or '' when every case is a hot path."""
    cold = group[~group["hot path"]]
    dense = int((param(cold, "baseline").notna() | (text(cold, "spec.variant") == "dense")).sum())
    forced = len(cold) - dense
    parts = [f"{n} {what}{'s' if n > 1 else ''}" for n, what in ((dense, "dense baseline"),
                                                                 (forced, "forced-routing case")) if n]
    return f" ({' and '.join(parts)} left out)" if parts else ""
