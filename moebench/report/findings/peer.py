"""PEER findings (figure peer): from which N product-key retrieval beats brute force, and how close
the largest N comes to its bandwidth floor.

Product keys and brute force are compared only within one configuration: the same run, heads, k,
d_model D, d_key, dtype and T, at an N both measured. The floor is `floor_s`, the expert rows one step
must read at the measured copy bandwidth; the fraction is `frac_of_ceiling` = floor_s / latency_s
(docs/results.md#metric-contract): 100% would be a step that only reads its rows once. A finding says
the latency as a multiple of the floor (latency_s / floor_s) and the fraction as the share of the
floor's speed the step reaches.
"""

from __future__ import annotations

import pandas as pd

from moebench.report.data import column
from moebench.report.findings.base import Finding
from moebench.report.findings.describe import conditions, percent, ratio, seconds

FIGURE = "peer"
CONFIG = ("spec.peer_heads", "spec.peer_k", "spec.d_model", "spec.d_key", "spec.dtype", "workload.tokens",
          "workload.batch")
RETRIEVAL = {"product": "product keys", "brute": "brute force"}
SETTINGS = (("heads", "spec.peer_heads"), ("k", "spec.peer_k"), ("D", "spec.d_model"), ("d_key", "spec.d_key"),
            ("dtype", "spec.dtype"))  # a configuration's settings, as the findings name them


def peer_findings(df: pd.DataFrame) -> list[Finding]:
    """Per configuration: the N from which product keys beat brute force and by how much; then the
    latency and fraction of floor of each configuration at the largest N measured."""
    peer = _peer_rows(df)
    if peer.empty:
        return []
    d = peer[(peer["status"] == "ok") & (column(peer, "latency_s") > 0) & peer["N"].notna()]
    if d.empty:
        return [Finding(f"Every PEER case ({len(peer)}) failed or has no latency: nothing to compare.",
                        FIGURE, conditions(peer), answered=False)]
    name_run = df["run"].nunique() > 1
    return [*_crossover_findings(d, name_run), *_largest_n_findings(d, name_run)]


def _peer_rows(df: pd.DataFrame) -> pd.DataFrame:
    if "spec.variant" not in df:
        return df.iloc[0:0]
    d = df[df["spec.variant"] == "peer"].copy()
    d["N"] = column(d, "spec.peer_experts")
    d["config"] = [_config_name(r) for _, r in d.iterrows()]
    return d


def _config_name(row) -> str:
    """'heads=8, k=16, D=512, d_key=128': what the legend of the figure names, plus d_key."""
    return f"heads={row.get('spec.peer_heads')}, k={row.get('spec.peer_k')}, D={row.get('spec.d_model')}, " \
           f"d_key={row.get('spec.d_key')}"


def _configurations(d: pd.DataFrame) -> list[pd.DataFrame]:
    key = ["run", *(c for c in CONFIG if c in d)]
    return [rows for _, rows in d.groupby(key, sort=False, dropna=False)]


def _latency_by_n(rows: pd.DataFrame, retrieval: str) -> pd.Series:
    part = rows[rows["spec.peer_retrieval"] == retrieval] if "spec.peer_retrieval" in rows else rows.iloc[0:0]
    return pd.Series(column(part, "latency_s").to_numpy(), index=part["N"].to_numpy()).groupby(level=0).median()


def _crossover_findings(d: pd.DataFrame, name_run: bool) -> list[Finding]:
    found = []
    for rows in _configurations(d):
        product, brute = _latency_by_n(rows, "product"), _latency_by_n(rows, "brute")
        both = product.index.intersection(brute.index).sort_values()
        if both.empty:
            continue
        speedup = brute[both] / product[both]  # > 1: product keys faster
        cond = conditions(rows, name_run)
        found.append(Finding(f"{rows['config'].iloc[0]}: {_crossover_text(speedup)}.", FIGURE, cond))
    if not found:
        found.append(Finding("Product keys and brute force cannot be compared: no N has both with the same heads, "
                             "k, D, d_key, dtype and T.", FIGURE, conditions(d, name_run), answered=False))
    return found


def _crossover_text(speedup: pd.Series) -> str:
    """Where product keys win among the Ns measured with both, and by how much."""
    ns = [int(n) for n in speedup.index]
    span = f"N={ns[0]:,}" if len(ns) == 1 else f"N={ns[0]:,} to {ns[-1]:,}"
    wins = speedup > 1
    if not wins.any():
        return f"brute force was faster at every N measured with both ({span}; product keys at most " \
               f"{speedup.max():.2f}× its speed)"
    first = ns[int(wins.to_numpy().argmax())]
    last = f"{speedup.iloc[-1]:.1f}× at N={ns[-1]:,}"
    if wins.all():
        head = f"product keys beat brute force at every N measured with both ({span})"
    elif wins[speedup.index >= first].all():
        head = f"product keys beat brute force from N={first:,} on (brute force faster below; measured {span})"
    else:
        faster = ", ".join(f"{n:,}" for n, w in zip(ns, wins, strict=True) if w)
        head = f"product keys beat brute force only at N={faster} (measured {span})"
    at_first = f"{speedup[speedup.index == first].iloc[0]:.1f}× faster at N={first:,}"
    return f"{head}: {at_first}" + (f", {last}" if ns[-1] != first else "")


def _largest_n_findings(d: pd.DataFrame, name_run: bool) -> list[Finding]:
    """One sentence per run: at that run's largest N, each configuration's latency against its
    floor. The settings all of them share are said once; each is named by those that differ."""
    found = []
    for _, run_rows in d.groupby("run", sort=False):
        n_max = run_rows["N"].max()
        at = run_rows[run_rows["N"] == n_max]
        varying = [(name, col) for name, col in SETTINGS if col in at and at[col].astype(str).nunique() > 1]
        shared = ", ".join(f"{name}={at[col].iloc[0]}" for name, col in SETTINGS
                           if col in at and pd.notna(at[col].iloc[0]) and (name, col) not in varying)
        if len(at) == 1:
            text = f"At the largest N measured ({int(n_max):,}), {_at_floor_text(at.iloc[0], shared)}."
        else:
            parts = [_against_floor(r, ", ".join(f"{name}={r[col]}" for name, col in varying))
                     for _, r in at.iterrows()]
            text = (f"At the largest N measured ({int(n_max):,}; {shared}), latency per step against the bandwidth "
                    "floor: " + "; ".join(parts) + ".")
        found.append(Finding(text, FIGURE, conditions(at, name_run)))
    return found


def _at_floor_text(row, settings: str) -> str:
    """'product keys with heads=8, k=16 take 18 ms per step, 5.25× the bandwidth floor of 3.43 ms (it
    reaches 19.1% of the floor's speed)'."""
    retrieval = _retrieval(row)
    verb = "takes" if retrieval == "brute force" else "take"
    text = f"{retrieval}{' with ' + settings if settings else ''} {verb} {seconds(float(row['latency_s']))} per step"
    floor, frac = _floor(row)
    if floor is None:
        return text + " (no bandwidth floor recorded)"
    return (text + f", {_times_floor(row, floor)} the bandwidth floor of {seconds(floor)} "
            f"(a step reaches {_speed(frac)})")


def _against_floor(row, settings: str) -> str:
    """'product keys heads=8, k=16: 8.75 ms, 2.55× the floor of 3.43 ms (39.2% of the floor's speed)': one of
    several at one N."""
    text = f"{_retrieval(row)}{' ' + settings if settings else ''}: {seconds(float(row['latency_s']))}"
    floor, frac = _floor(row)
    if floor is None:
        return text + " (no floor recorded)"
    return text + f", {_times_floor(row, floor)} the floor of {seconds(floor)} ({_speed(frac)})"


def _times_floor(row, floor: float) -> str:
    """The latency as a multiple of the floor: 1/frac_of_ceiling."""
    return ratio(float(row["latency_s"]) / floor) if floor > 0 else "?"


def _speed(frac: float) -> str:
    """'19.1% of the floor's speed': frac_of_ceiling = floor_s / latency_s."""
    return f"{percent(frac)} of the floor's speed"


def _retrieval(row) -> str:
    return RETRIEVAL.get(str(row.get("spec.peer_retrieval")), str(row.get("spec.peer_retrieval")))


def _floor(row) -> tuple[float | None, float]:
    """floor_s and frac_of_ceiling (floor_s / latency_s), None when the record lacks either."""
    floor = pd.to_numeric(pd.Series([row.get("floor_s")]), errors="coerce").iloc[0]
    frac = pd.to_numeric(pd.Series([row.get("frac_of_ceiling")]), errors="coerce").iloc[0]
    return (None, float("nan")) if pd.isna(floor) or pd.isna(frac) else (float(floor), float(frac))
