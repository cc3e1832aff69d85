"""Model findings: one sentence per published model's MoE layer (suite axis `preset`): the median step
latency, tokens/s and the expert FLOP rate as a fraction of the dense-GEMM ceiling measured in the same
run (`frac_of_ceiling`); a preset whose case did not finish says so, with its error. With two presets
or more, which runs its experts closest to that ceiling and which farthest."""

from __future__ import annotations

import math

import pandas as pd

from moebench.report.data import column
from moebench.report.findings.base import Finding
from moebench.report.findings.describe import conditions, param, percent, rate, seconds, several_runs, situation, text

FIGURE = "throughput"


def preset_speed(df: pd.DataFrame) -> list[Finding]:
    if df.empty:
        return []
    presets = df[param(df, "preset").notna()]
    name_run = several_runs(df)
    return [_sentence(row, name_run) for _, row in presets.iterrows()] + _closest_to_ceiling(presets, name_run)


def _closest_to_ceiling(presets: pd.DataFrame, name_run: bool) -> list[Finding]:
    """Per run, dtype, T and mode with two or more finished presets: which runs its experts closest to
    the dense-GEMM ceiling and which farthest (the layer shapes differ; the fraction compares them)."""
    rows = presets[(presets["status"] == "ok") & column(presets, "frac_of_ceiling").notna()].copy()
    keys = ("run", "spec.dtype", "workload.tokens", "workload.batch", "workload.mode")
    for key in keys:
        rows[f"key {key}"] = text(rows, key, "?")
    found = []
    for _, group in rows.groupby([f"key {k}" for k in keys], sort=False):
        if len(group) < 2:
            continue
        frac = column(group, "frac_of_ceiling")
        best, worst = group.loc[frac.idxmax()], group.loc[frac.idxmin()]
        found.append(Finding(
            f"{situation(best)}: of {len(group)} presets, {best['case_params']['preset']} runs its experts closest "
            f"to the dense-GEMM ceiling ({percent(frac[best.name])}) and {worst['case_params']['preset']} "
            f"farthest ({percent(frac[worst.name])}).", FIGURE, conditions(group, name_run)))
    return found


def _sentence(row: pd.Series, name_run: bool) -> Finding:
    preset = row["case_params"]["preset"]
    cond = conditions(row.to_frame().T, name_run)
    if row["status"] != "ok":
        error = str(row.get("error") or "no error recorded").splitlines()[0][:160]
        return Finding(f"{preset}: the case did not finish ({row['status']}: {error}), so it has no speed.",
                       FIGURE, cond, answered=False)
    latency = column(row.to_frame().T, "latency_s").iloc[0]
    if not latency > 0:
        return Finding(f"{preset}: the case finished without a latency.", FIGURE, cond, answered=False)
    tokens_per_s = column(row.to_frame().T, "tokens_per_s").iloc[0]
    sentence = f"{preset} ({situation(row)}): {seconds(latency)} per step, {rate(tokens_per_s)}"
    frac = column(row.to_frame().T, "frac_of_ceiling").iloc[0]
    if math.isfinite(frac):
        sentence += f", its experts at {percent(frac)} of the dense-GEMM ceiling measured in the same run"
    return Finding(sentence + ".", FIGURE, cond)
