"""Model findings: one sentence per published model's MoE layer (suite axis `preset`): the median step
latency, tokens/s and the expert FLOP rate as a fraction of the dense-GEMM ceiling measured in the same
run (`frac_of_ceiling`); a preset whose case did not finish says so, with its error."""

from __future__ import annotations

import math

import pandas as pd

from moebench.report.data import column
from moebench.report.findings import Finding
from moebench.report.findings.describe import conditions, param, percent, rate, seconds, several_runs, situation

FIGURE = "throughput"


def preset_speed(df: pd.DataFrame) -> list[Finding]:
    if df.empty:
        return []
    presets = df[param(df, "preset").notna()]
    name_run = several_runs(df)
    return [_sentence(row, name_run) for _, row in presets.iterrows()]


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
