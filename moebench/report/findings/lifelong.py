"""Lifelong findings: what freezing saves. A `lifelong` case with `expand` n grows a layer of E experts to
E + n and freezes the E old ones and their gate rows; it is compared with fine-tuning in full a layer of
the same size (E + n experts, same d_model, d_ff, top-k), same run, dtype, T and mode: the `lifelong`
layer built at that size with nothing frozen where the run has one (the same code, so the difference is
the freezing alone), else a plain `token_choice` layer. Saving = 1 - frozen / full, for the median step
time (`latency_s`) and the AdamW state (`optimizer_state_bytes`); negative means freezing costs more."""

from __future__ import annotations

import math

import pandas as pd

from moebench.report.data import column, ok_cases
from moebench.report.findings.base import Finding
from moebench.report.findings.describe import conditions, seconds, several_runs, situation, size, text

MATCH_KEYS = ("run", "spec.dtype", "workload.tokens", "workload.batch", "workload.mode", "spec.d_model", "spec.d_ff",
              "spec.top_k")
FIGURE = "throughput"


def freezing_saving(df: pd.DataFrame) -> list[Finding]:
    if df.empty:
        return []
    expanding = (text(df, "spec.variant") == "lifelong") & (column(df, "workload.expand") > 0)
    if not expanding.any():
        return []
    rows = ok_cases(df)
    rows = rows[(column(rows, "latency_s") > 0) & (column(rows, "spec.n_experts") > 0)]
    grown = rows[(text(rows, "spec.variant") == "lifelong") & (column(rows, "workload.expand") > 0)]
    if grown.empty:
        return [Finding("The saving of freezing is not computed: no lifelong case that adds experts finished "
                        "with a latency.",
                        FIGURE, answered=False)]
    unfrozen_lifelong = (text(rows, "spec.variant") == "lifelong") & ~(column(rows, "workload.expand") > 0)
    full = rows[unfrozen_lifelong | (text(rows, "spec.variant") == "token_choice")]
    name_run = several_runs(df)
    return [_sentence(case, full, name_run) for _, case in grown.iterrows()]


def _reference(case: pd.Series, full: pd.DataFrame) -> pd.DataFrame:
    """The fully trained cases of the grown layer's size under the same conditions, the unfrozen
    lifelong layer first (same code as the grown one), then token_choice."""
    total = int(case["spec.n_experts"]) + int(case["workload.expand"])
    match = full[column(full, "spec.n_experts") == total]
    match = match[column(match, "spec.capacity_factor").isna()]
    wanted = case.to_frame().T
    for key in MATCH_KEYS:  # both sides through text(): a key the case lacks is '?' on each, never 'nan' on one
        match = match[text(match, key, "?") == text(wanted, key, "?").iloc[0]]
    return match.sort_values("spec.variant", key=lambda v: v != "lifelong", kind="stable")


def _sentence(case: pd.Series, full: pd.DataFrame, name_run: bool) -> Finding:
    old, new = int(case["spec.n_experts"]), int(case["workload.expand"])
    total = old + new
    what = f"Freezing the {old} old experts of a layer grown to {total} (lifelong, expand {new})"
    reference = _reference(case, full)
    if reference.empty:
        return Finding(f"{what}: no full fine-tuning of a layer with {total} experts ran under the same "
                       f"conditions ({situation(case)}, same d_model, d_ff and top-k), so the saving of freezing "
                       "is not computed.", FIGURE, conditions(case.to_frame().T, name_run), answered=False)
    ref = reference.iloc[0]
    frozen_s, full_s = float(case["latency_s"]), float(ref["latency_s"])
    control = "the same layer with nothing frozen" if ref["spec.variant"] == "lifelong" else "a token_choice layer"
    sentence = (f"{what} takes {seconds(frozen_s)} per step against {seconds(full_s)} for fine-tuning all {total} "
                f"of {control} in full ({_saving(frozen_s, full_s)})")
    frozen_b, full_b = _number(case, "optimizer_state_bytes"), _number(ref, "optimizer_state_bytes")
    if math.isfinite(frozen_b) and math.isfinite(full_b):
        sentence += (f" and holds {size(frozen_b)} of optimizer state against {size(full_b)} "
                     f"({_saving(frozen_b, full_b)})")
    else:
        sentence += "; the optimizer state was not recorded (it is, for mode train_step)"
    rows = pd.concat([case.to_frame().T, ref.to_frame().T])
    return Finding(sentence + ".", FIGURE, conditions(rows, name_run))


def _number(row: pd.Series, name: str) -> float:
    value = pd.to_numeric(pd.Series([row.get(name)]), errors="coerce").iloc[0]
    return float(value) if pd.notna(value) else math.nan


def _saving(frozen: float, full: float) -> str:
    """'31% less' or '5% more' than the full fine-tuning."""
    if not full > 0:
        return "no reference to save on"
    saving = 1 - frozen / full
    return f"{abs(saving) * 100:.3g}% {'less' if saving >= 0 else 'more'}"
