"""Findings: the sentences at the top of a report, computed from its results, never hand-written.

A finder takes the cases DataFrame (report.data.load_runs) and returns Findings: one sentence each,
with its numbers and the conditions they hold under, and the figure (a name in report.plots.FIGURES)
that shows it. Where the data cannot answer a question (a suite filtered to one G, a figure's
reference missing), the finder says so in a Finding with answered=False instead of guessing.

Finders live one module per subject (report/findings/<subject>.py) and are listed in FINDERS;
FINDERS_BY_KIND says which a suite kind shows, as plots.FIGURES_BY_KIND does for figures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class Finding:
    text: str  # one sentence, with its numbers (plain text: escaped when rendered)
    figure: str | None = None  # the figure (plots.FIGURES name) that shows it; linked when drawn
    conditions: str = ""  # what the numbers hold under: dtype, T, threads, device, ...
    answered: bool = True  # False: the data cannot answer; `text` says why


Finder = Callable[[pd.DataFrame], list[Finding]]


def conditions_text(rows: pd.DataFrame, name_run: bool = False) -> str:
    """What the numbers of these rows hold under, each field only where the rows record it:
    'float32, T=2048, 2 threads, cpu' ('run X, ...' when `name_run`: a report of several runs)."""
    def values(col: str) -> list[str]:
        return sorted({str(v) for v in rows[col].dropna()}) if col in rows else []

    def numbers(col: str) -> pd.Series:
        return pd.to_numeric(rows[col], errors="coerce") if col in rows else pd.Series(float("nan"), rows.index)

    tokens = sorted({int(t) for t in (numbers("workload.tokens") * numbers("workload.batch").fillna(1)).dropna()})
    threads = sorted({int(t) for t in numbers("timing.threads").dropna()})
    fields = ["run " + "/".join(values("run")) if name_run else "", "/".join(values("spec.dtype")),
              "T=" + "/".join(map(str, tokens)) if tokens else "",
              "/".join(map(str, threads)) + " threads" if threads else "", "/".join(values("device"))]
    return ", ".join(f for f in fields if f)


# The finders import Finding and conditions_text from here, so they are imported after them.
from moebench.report.findings.capacity import capacity_findings  # noqa: E402
from moebench.report.findings.granularity import granularity_findings  # noqa: E402
from moebench.report.findings.peer import peer_findings  # noqa: E402
from moebench.report.findings.ratios import ratio_findings  # noqa: E402

FINDERS: dict[str, Finder] = {  # name: finder; one module per subject
    "granularity": granularity_findings,
    "capacity": capacity_findings,
    "peer": peer_findings,
    "ratios": ratio_findings,
}

# "mixed" (quick) and unknown kinds get every finder; a finder with nothing to say returns [].
FINDINGS_BY_KIND: dict[str, tuple[str, ...]] = {
    "granularity": ("granularity",),
    "capacity": ("capacity",),
    "peer": ("peer",),
}
SEVERAL_RUNS = ("ratios",)  # asked for by every kind; a finding only with two or more runs


def findings_for(df: pd.DataFrame, kinds: Iterable[str]) -> list[Finding]:
    """The findings the given suite kinds call for, in FINDERS order."""
    wanted: set[str] = set(SEVERAL_RUNS)
    for kind in kinds:
        wanted |= set(FINDINGS_BY_KIND.get(kind, FINDERS))
    found: list[Finding] = []
    for name, finder in FINDERS.items():
        if name in wanted:
            found += finder(df)
    return found
