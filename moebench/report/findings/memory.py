"""Memory findings: the measured peak (`peak_bytes`: allocated during a step above what was live before
it) against the analytic upper bound on a forward's activations (`predicted_activation_bytes_upper`,
accounting.layer_activation_bytes), per run, mode, dtype and T.

For forward cases: whether the bound held (peak <= bound) in every case, and the case farthest from
it. Where the bound held everywhere, that is the case with the most slack (bound - peak, in bytes): how
loose the bound is. Where it failed, it is the case with the largest excess (peak - bound).

The bound covers a forward's activations only: a backward or training step also holds gradients (and
optimizer state), so for any other mode no verdict is given (the memory figure draws no bound there);
the finding says so and gives the range of the measured peaks."""

from __future__ import annotations

import pandas as pd

from moebench.report.data import column, ok_cases
from moebench.report.findings.base import Finding
from moebench.report.findings.describe import case_name, conditions, ratio, several_runs, situation, size, text

GROUP_KEYS = ("run", "workload.mode", "spec.dtype", "workload.tokens", "workload.batch")  # T = tokens x batch
FIGURE = "memory"
BOUNDED_MODE = "forward"  # the only mode the activation bound covers
MAX_NAMED = 4  # cases named in a sentence; the rest counted


def peak_against_bound(df: pd.DataFrame) -> list[Finding]:
    if df.empty:
        return []
    rows = ok_cases(df)
    # a negative peak or a bound of no bytes is not a measurement to judge a bound by
    measured = (column(rows, "peak_bytes") >= 0) & (column(rows, "predicted_activation_bytes_upper") > 0)
    rows = rows[measured].copy()
    if rows.empty:
        if (df["status"] != "ok").all():
            return [Finding("The measured peak is not compared with the analytic activation bound: no case "
                            "finished.", FIGURE, answered=False)]
        if column(df, "peak_bytes").notna().any():
            return [Finding("The measured peak is not compared with the analytic activation bound: no finished "
                            "case records both a peak_bytes >= 0 and a predicted_activation_bytes_upper > 0.",
                            FIGURE, answered=False)]
        return []  # memory was not measured in this run: nothing to say
    for key in GROUP_KEYS:
        rows[f"key {key}"] = text(rows, key, "?")
    name_run = several_runs(df)
    return [_sentence(group, name_run) for _, group in rows.groupby([f"key {k}" for k in GROUP_KEYS], sort=False)]


def _sentence(group: pd.DataFrame, name_run: bool) -> Finding:
    if group["key workload.mode"].iloc[0] != BOUNDED_MODE:  # a mode not recorded gets no verdict either
        return _unbounded_sentence(group, name_run)
    peak = column(group, "peak_bytes")
    bound = column(group, "predicted_activation_bytes_upper")
    excess = peak - bound
    failed = excess > 0
    n = len(group)
    head = situation(group.iloc[0])
    if n == 1:
        only = group.index[0]
        verdict = "exceeded" if failed[only] else "stayed within"
        sentence = (f"{head}: the measured peak {verdict} the analytic activation upper bound in its one case, "
                    f"{case_name(group.at[only, 'case_params'])}: {_peak_and_bound(peak[only], bound[only])}")
    elif failed.any():
        worst = excess.idxmax()
        names = [case_name(p) for p in group.loc[failed[failed].index, "case_params"]]
        which = ", ".join(names[:MAX_NAMED]) + (f" and {len(names) - MAX_NAMED} more" if len(names) > MAX_NAMED else "")
        sentence = (f"{head}: the measured peak exceeded the analytic activation upper bound in {int(failed.sum())} "
                    f"of {n} cases ({which}); the largest excess is {case_name(group.at[worst, 'case_params'])}, "
                    f"{_peak_and_bound(peak[worst], bound[worst])}")
    else:
        worst = (bound - peak).idxmax()
        sentence = (f"{head}: the measured peak stayed within the analytic activation upper bound in all {n} cases; "
                    f"the loosest is {case_name(group.at[worst, 'case_params'])}, "
                    f"{_peak_and_bound(peak[worst], bound[worst])}")
    return Finding(sentence + ".", FIGURE, conditions(group, name_run))


def _unbounded_sentence(group: pd.DataFrame, name_run: bool) -> Finding:
    """A mode the forward-only bound does not cover: no verdict, the measured peaks' range instead."""
    peak = column(group, "peak_bytes")
    low, high = peak.idxmin(), peak.idxmax()
    if len(group) == 1:
        measured = f"its one case, {case_name(group.at[low, 'case_params'])}, peaked at {size(peak[low])}"
    else:
        measured = (f"its {len(group)} cases peaked at {size(peak[low])} ({case_name(group.at[low, 'case_params'])}) "
                    f"to {size(peak[high])} ({case_name(group.at[high, 'case_params'])})")
    sentence = (f"{situation(group.iloc[0])}: the analytic activation upper bound covers a forward's activations "
                f"only (not gradients or optimizer state), so no verdict on it is given for this mode; {measured}.")
    return Finding(sentence, FIGURE, conditions(group, name_run), answered=False)


def _peak_and_bound(peak: float, bound: float) -> str:
    """'peak 10 MiB against a bound of 4 MiB (2.5× the bound)' or '(3 MiB to spare)'."""
    text = f"peak {size(peak)} against a bound of {size(bound)}"
    if peak > bound:
        return text + (f" ({ratio(peak / bound)} the bound)" if bound > 0 else "")
    return text + f" ({size(bound - peak)} to spare)"
