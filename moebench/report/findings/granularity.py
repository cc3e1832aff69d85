"""Granularity findings (figure routing_tax): where routing starts to cost a real share of the layer,
and what splitting experts finer does to throughput.

The routing share is the metric `routing_frac`: (router + dispatch + combine phase times) / the sum of
all the layer's phase times (docs/results.md#metric-contract), measured per case. A series is one run
and one configuration (the case's suite axes other than G: the dtype in the bundled suite).
"""

from __future__ import annotations

import pandas as pd

from moebench.report.data import column
from moebench.report.findings.base import Finding
from moebench.report.findings.describe import conditions

FIGURE = "routing_tax"
THROUGHPUT_FIGURE = "throughput"  # the G=16 / G=1 speed is drawn there, not in the routing tax
ROUTING_PHASES = ("router", "dispatch", "combine")
SHARES = (0.25, 0.5)  # routing shares of the layer a reader asks about
G_BASE, G_FINE = 1, 16  # throughput at G_FINE relative to G_BASE


def granularity_findings(df: pd.DataFrame) -> list[Finding]:
    """Per series: the first G at which the routing share passes 25% and 50%, and the throughput
    at G=16 relative to G=1; a finding with answered=False where the data cannot tell."""
    d = _granularity_rows(df)
    found: list[Finding] = []
    for rows in _series(d):
        name = _series_name(rows)
        cond = conditions(rows, name_run=df["run"].nunique() > 1)
        found.append(_routing_share_finding(rows, name, cond))
        found.append(_throughput_finding(rows, name, cond))
    return found


def _granularity_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Every case with a granularity axis, failed ones included (a failed G is said, not skipped)."""
    if df.empty or "case_params" not in df:
        return df.iloc[0:0]
    has_g = [isinstance(p, dict) and "granularity" in p for p in df["case_params"]]
    d = df[has_g].copy()
    d["G"] = [int(p["granularity"]) for p in d["case_params"]]
    return d


def _others(params: dict) -> tuple:
    return tuple(sorted((k, str(v)) for k, v in params.items() if k != "granularity"))


def _series(d: pd.DataFrame) -> list[pd.DataFrame]:
    """One frame per run and configuration, in the order the cases were run."""
    if d.empty:
        return []
    key = [f"{run}|{_others(p)}" for run, p in zip(d["run"], d["case_params"], strict=True)]
    return [rows.sort_values("G") for _, rows in d.groupby(key, sort=False)]


def _series_name(rows: pd.DataFrame) -> str:
    """'float32' or 'float32, backend=loop': the dtype, then the other axes that vary."""
    dtypes = sorted({str(v) for v in rows["spec.dtype"].dropna()}) if "spec.dtype" in rows else []
    rest = [f"{k}={v}" for k, v in _others(rows["case_params"].iloc[0]) if k != "dtype"]
    return ", ".join(["/".join(dtypes) or "G sweep", *rest])


def _measured(rows: pd.DataFrame, metric: str) -> tuple[pd.Series, list[int]]:
    """The metric per G of the finished cases that recorded it, and the Gs that have no value
    (failed, or the metric missing)."""
    value = column(rows, metric).where(rows["status"] == "ok")
    by_g = pd.Series(value.to_numpy(), index=rows["G"].to_numpy()).groupby(level=0).median()
    return by_g.dropna(), sorted(by_g.index[by_g.isna()].tolist())


def _listed(gs: list[int]) -> str:
    return ", ".join(f"G={g}" for g in gs)


def _with_routing_share(rows: pd.DataFrame) -> pd.DataFrame:
    """rows with `routing_frac`, computed from the phase_*_s columns where a record lacks it (the same
    ratio moebench.bench records: router + dispatch + combine over the sum of every phase)."""
    phases = [c for c in rows if c.startswith("phase_") and c.endswith("_s")]
    total = sum((column(rows, c).fillna(0) for c in phases), pd.Series(0.0, index=rows.index))
    routing = sum((column(rows, f"phase_{p}_s").fillna(0) for p in ROUTING_PHASES), pd.Series(0.0, rows.index))
    from_phases = (routing / total).where(total > 0)
    return rows.assign(routing_frac=column(rows, "routing_frac").fillna(from_phases))


def _routing_share_finding(rows: pd.DataFrame, name: str, cond: str) -> Finding:
    share, missing = _measured(_with_routing_share(rows), "routing_frac")
    if share.size < 2:
        have = f"only {_listed(share.index.tolist())} has" if share.size else "no case has"
        # a sweep that ran but failed needs its failures looked at, not a longer sweep
        why = f"{_listed(missing)} did not finish or lack phase times" if missing else "a sweep over G is needed"
        return Finding(f"{name}: the G from which router + dispatch + combine take more than 25% and 50% of the "
                       f"summed phase time cannot be told: {have} a measured routing share ({why}).",
                       FIGURE, cond, answered=False)
    parts, answered = [], True
    for threshold in SHARES:
        where, ok = _first_g_past(share, missing, threshold)
        parts.append(f"more than {threshold:.0%}" + (" of the summed phase time " if not parts else " ") + where)
        answered &= ok
    return Finding(f"{name}: router + dispatch + combine take " + "; ".join(parts) + ".", FIGURE, cond,
                   answered=answered)


def _first_g_past(share: pd.Series, missing: list[int], threshold: float) -> tuple[str, bool]:
    """'first at G=32 (28.3%)' or 'never up to G=64 (at most 33.9%, at G=64)' for the first G whose
    share exceeds the threshold; False when a G without a value lies before the answer, since the
    first G could be that one."""
    past = share[share > threshold]
    if past.empty:
        text = f"never up to G={share.index.max()} (at most {share.max():.1%}, at G={share.idxmax()})"
        unsure = missing
    else:
        g = past.index[0]
        text = f"first at G={g} ({past.iloc[0]:.1%})"
        if g == share.index.min() and g > 1:
            text += ", the smallest G measured"  # a G below it, not run, could pass too
        unsure = [m for m in missing if m < g]
    if unsure:
        verb = "has" if len(unsure) == 1 else "have"
        text += f", though {_listed(unsure)} {verb} no measurement and could be earlier"
    return text, not unsure


def _throughput_finding(rows: pd.DataFrame, name: str, cond: str) -> Finding:
    tps, missing = _measured(rows, "tokens_per_s")
    lacking = [g for g in (G_BASE, G_FINE) if g not in tps.index]
    if lacking:
        why = [f"the case at G={g} {'failed or has no tokens/s' if g in missing else 'was not run'}"
               for g in lacking]
        return Finding(f"{name}: throughput at G={G_FINE} relative to G={G_BASE} cannot be given: "
                       + " and ".join(why) + ".", THROUGHPUT_FIGURE, cond, answered=False)
    fine, base = tps[G_FINE], tps[G_BASE]
    return Finding(f"{name}: throughput at G={G_FINE} is {fine / base:.2f}× that at G={G_BASE} "
                   f"({fine:,.0f} against {base:,.0f} tokens/s).", THROUGHPUT_FIGURE, cond)
