"""How a finding words what it found: a case's name, numbers with their units, and the conditions
(dtype, T, mode, threads, device) read from the rows the numbers came from. Plain text: the page
escapes it when rendering."""

from __future__ import annotations

import math

import pandas as pd

from moebench.report.data import column
from moebench.report.figure_base import case_head

SAID_ELSEWHERE = ("dtype", "tokens", "mode")  # each finding states them: not repeated in a case's name
OWN_ROUTER = "layer's own router (not forced)"  # workload routing "router", as findings and the drops figure say it


def case_name(params, drop: tuple[str, ...] = ()) -> str:
    """A short name from a case's params: 'dense FFN (equal_active)', a preset, or variant/backend,
    then the other axes as k=v in parentheses (dtype, tokens, mode and those in `drop` left out: the finding's
    sentence and conditions say them)."""
    head, rest = case_head({k: v for k, v in (params or {}).items() if k not in (*SAID_ELSEWHERE, *drop)})
    if not head:
        return ", ".join(rest) or "base"
    return f"{head} ({', '.join(rest)})" if rest else head


def seconds(value: float) -> str:
    """12.3 ms, 850 µs, 1.20 s."""
    if not math.isfinite(value):
        return "?"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value * 1e9:.3g} ns"


def rate(tokens_per_s: float) -> str:
    """14.7k tokens/s."""
    if not math.isfinite(tokens_per_s):
        return "? tokens/s"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(tokens_per_s) >= scale:
            return f"{tokens_per_s / scale:.3g}{unit} tokens/s"
    return f"{tokens_per_s:.3g} tokens/s"


def size(n_bytes: float) -> str:
    """Binary units: 1.50 MiB."""
    value = float(n_bytes)
    if not math.isfinite(value):
        return "? bytes"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.3g} {unit}" if unit != "B" else f"{value:.0f} B"
        value /= 1024
    return f"{value:.3g} GiB"


def ratio(value: float) -> str:
    """2.35×; '?' when not a number."""
    return f"{value:.3g}×" if math.isfinite(value) else "?"


def percent(value: float) -> str:
    """12.5%; '?' when not a number."""
    return f"{100 * value:.3g}%" if math.isfinite(value) else "?"


def _values(rows: pd.DataFrame, col: str) -> list[str]:
    if col not in rows:
        return []
    return sorted({str(v) for v in rows[col].dropna()})


def conditions(rows: pd.DataFrame, name_run: bool = False) -> str:
    """What the numbers of these rows hold under, each field only when the rows record it:
    'run X, float32, T=2048, forward, 2 threads, cpu timer, device cpu' (the run named when `name_run`: a
    report of several runs; T counts every token of a step, batch included)."""
    fields = []
    runs = _values(rows, "run")
    if name_run and runs:
        fields.append("run " + "/".join(runs))
    dtypes = _values(rows, "spec.dtype")
    if dtypes:
        fields.append("/".join(dtypes))
    tokens = sorted({int(t) for t in tokens_per_step(rows).dropna()})
    if tokens:
        fields.append("T=" + "/".join(str(t) for t in tokens))
    modes = _values(rows, "workload.mode")
    if modes:
        fields.append("/".join(modes))
    threads = sorted({int(t) for t in column(rows, "timing.threads").dropna()})
    if threads:
        fields.append("/".join(str(t) for t in threads) + (" thread" if threads == [1] else " threads"))
    timers = _values(rows, "timing.timer")
    if timers:
        fields.append("/".join(timers) + " timer")
    devices = _values(rows, "device")
    if devices:
        fields.append("device " + "/".join(devices))
    return ", ".join(fields)


def tokens_per_step(rows: pd.DataFrame) -> pd.Series:
    """T of each case: every token of a step, `workload.tokens` x `workload.batch` (a batch of 1 when not
    recorded). The one count of T every finding states."""
    return column(rows, "workload.tokens") * column(rows, "workload.batch").fillna(1)


def situation(row: pd.Series) -> str:
    """'forward, T=256, float32': the mode, token count (tokens_per_step) and dtype of one case."""
    tokens = tokens_per_step(row.to_frame().T).iloc[0]
    tokens_text = str(int(tokens)) if pd.notna(tokens) else "?"
    return f"{row.get('workload.mode') or '?'}, T={tokens_text}, {row.get('spec.dtype') or '?'}"


def several_runs(df: pd.DataFrame) -> bool:
    """The report holds several runs: each finding then names its run."""
    return "run" in df and df["run"].nunique() > 1


def text(df: pd.DataFrame, col: str, missing: str = "") -> pd.Series:
    """df[col] as text ('' or `missing` where a record lacks it): for grouping and matching."""
    if col not in df:
        return pd.Series(missing, index=df.index, dtype=object)
    return df[col].astype(object).where(df[col].notna(), missing).astype(str)


def param(df: pd.DataFrame, name: str) -> pd.Series:
    """Each case's suite axis `name` (case_params), None where the case has no such axis."""
    if "case_params" not in df:
        return pd.Series(None, index=df.index, dtype=object)
    return df["case_params"].map(lambda p: (p or {}).get(name))
