"""The comparison in one sentence per other run: how many cases moebench compare calls SLOW, FAST,
SAME, AMBIGUOUS (or CHANGED), and the largest ratio with its 95% CI. Only with two or more runs; the
numbers are the ratios figure's (report.fig_ratios.comparisons), which are compare's.

The largest slowdown is taken among the cases that ran the same code in both runs (a timing verdict:
SLOW, FAST, SAME or AMBIGUOUS). A CHANGED case ran another implementation: its ratio is not a slowdown
of one code path, so CHANGED cases are counted apart, never named as the largest slowdown."""

from __future__ import annotations

import pandas as pd

from moebench.compare import DEFAULT_ALPHA, DEFAULT_THRESHOLD
from moebench.report.fig_ratios import Comparison, comparisons, count_of_cases
from moebench.report.findings.base import Finding

TIMING_VERDICTS = ("SLOW", "FAST", "SAME", "AMBIGUOUS")  # the same code path timed in both runs


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
    same_code = [v for v in comp.verdicts if v.verdict in TIMING_VERDICTS]
    other_code = len(comp.verdicts) - len(same_code)
    head = f"{comp.run} against {comp.baseline}: {_counts(comp)} of {count_of_cases(len(comp.verdicts))}"
    apart = (f"; {count_of_cases(other_code)} ran other code in the two runs (not counted as a slowdown)"
             if other_code else "")
    if not same_code:
        return Finding(f"{head}: no case ran the same code in both runs, so no slowdown is named{apart}{tail}.",
                       "ratios", conditions, answered=False)
    worst = max(same_code, key=lambda v: v.ratio)
    change = "slowdown" if worst.ratio > 1 else "ratio (no case is slower)"
    text = (f"{head}; the largest {change} is {worst.case_id} at {worst.ratio:.3f}× [95% CI {worst.ci_low:.3f}, "
            f"{worst.ci_high:.3f}], {worst.verdict}{apart}{tail}.")
    return Finding(text, "ratios", conditions)


def _counts(comp: Comparison) -> str:
    """'2 SLOW, 0 FAST, 4 SAME, 0 AMBIGUOUS': the four timing verdicts always, CHANGED when any."""
    n = comp.counts()
    shown = ["SLOW", "FAST", "SAME", "AMBIGUOUS"] + [k for k in n if k not in ("SLOW", "FAST", "SAME", "AMBIGUOUS")]
    return ", ".join(f"{n.get(k, 0)} {k}" for k in shown)
