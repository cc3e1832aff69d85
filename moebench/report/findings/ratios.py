"""The comparison in one sentence per other run: how many cases moebench compare calls SLOW, FAST,
SAME, AMBIGUOUS (or CHANGED), and the largest ratio with its 95% CI. Only with two or more runs; the
numbers are the ratios figure's (report.fig_ratios.comparisons), which are compare's."""

from __future__ import annotations

import pandas as pd

from moebench.compare import DEFAULT_ALPHA, DEFAULT_THRESHOLD
from moebench.report.fig_ratios import Comparison, comparisons, count_of_cases
from moebench.report.findings.base import Finding


def ratio_findings(df: pd.DataFrame) -> list[Finding]:
    """One finding per run after the first; [] with a single run."""
    return [_finding(c) for c in comparisons(df)]


def _finding(comp: Comparison) -> Finding:
    conditions = (f"median {comp.metric} per step; threshold {DEFAULT_THRESHOLD:.0%}, alpha {DEFAULT_ALPHA:g}, "
                  "as moebench compare")
    left = len(comp.not_compared) + len(comp.only_baseline) + len(comp.only_run)
    tail = f"; {count_of_cases(left)} not compared (listed under the ratios figure)" if left else ""
    if not comp.verdicts and not comp.not_compared:  # e.g. runs of two suites: naming every case says nothing
        return Finding(f"No case of {comp.run} could be compared with {comp.baseline}: they share no case id "
                       f"({count_of_cases(len(comp.only_baseline))} only in {comp.baseline}, "
                       f"{count_of_cases(len(comp.only_run))} only in {comp.run}).", "ratios", conditions,
                       answered=False)
    if not comp.verdicts:
        return Finding(f"No case of {comp.run} could be compared with {comp.baseline}: {comp.unmatched()}.",
                       "ratios", conditions, answered=False)
    worst = max(comp.verdicts, key=lambda v: v.ratio)
    change = "slowdown" if worst.ratio > 1 else "ratio (no case is slower)"
    text = (f"{comp.run} against {comp.baseline}: {_counts(comp)} of {count_of_cases(len(comp.verdicts))}; the largest "
            f"{change} is {worst.case_id} at {worst.ratio:.3f}× [95% CI {worst.ci_low:.3f}, {worst.ci_high:.3f}], "
            f"{worst.verdict}{tail}.")
    return Finding(text, "ratios", conditions)


def _counts(comp: Comparison) -> str:
    """'2 SLOW, 0 FAST, 4 SAME, 0 AMBIGUOUS': the four timing verdicts always, CHANGED when any."""
    n = comp.counts()
    shown = ["SLOW", "FAST", "SAME", "AMBIGUOUS"] + [k for k in n if k not in ("SLOW", "FAST", "SAME", "AMBIGUOUS")]
    return ", ".join(f"{n.get(k, 0)} {k}" for k in shown)
