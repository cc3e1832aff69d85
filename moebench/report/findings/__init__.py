"""Findings: the sentences at the top of a report, computed from its results, never hand-written.

A finder takes the cases DataFrame (report.data.load_runs) and returns Findings (findings/base.py): one
sentence each, with its numbers and the conditions they hold under, and the figure (a name in
report.plots.FIGURES) that shows it. Where the data cannot answer a question (a suite filtered to one G,
a figure's reference missing), the finder says so in a Finding with answered=False instead of guessing.

Finders live one module per subject (report/findings/<subject>.py; findings/describe.py words names,
numbers and conditions for all of them) and are listed in FINDERS; FINDINGS_BY_KIND says which a suite
kind shows, as plots.FIGURES_BY_KIND does for figures.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from moebench.report.findings import lifelong, memory, models, routers, throughput
from moebench.report.findings.base import Finder, Finding
from moebench.report.findings.capacity import capacity_findings
from moebench.report.findings.granularity import granularity_findings
from moebench.report.findings.peer import peer_findings
from moebench.report.findings.ratios import ratio_findings

__all__ = ["FINDERS", "FINDINGS_BY_KIND", "SEVERAL_RUNS", "Finder", "Finding", "findings_for"]

FINDERS: dict[str, Finder] = {  # name: finder; one module per subject
    "ratios": ratio_findings,
    "granularity": granularity_findings,
    "capacity": capacity_findings,
    "peer": peer_findings,
    "throughput": throughput.fastest_backend,
    "hot_paths": throughput.hot_path_spread,
    "models": models.preset_speed,
    "routers": routers.router_cost_and_balance,
    "memory": memory.peak_against_bound,
    "lifelong": lifelong.freezing_saving,
}

# "mixed" (quick) and unknown kinds get every finder; a finder with nothing to say returns [].
FINDINGS_BY_KIND: dict[str, tuple[str, ...]] = {
    "granularity": ("granularity",),
    "capacity": ("capacity",),
    "peer": ("peer",),
    "throughput": ("throughput",),
    "ci": ("hot_paths",),
    "models": ("models",),
    "routers": ("routers",),
    "memory": ("memory",),
    "lifelong": ("lifelong",),
}
SEVERAL_RUNS = ("ratios",)  # asked for by every kind; a finding only with two or more runs


def findings_for(df: pd.DataFrame, kinds: Iterable[str]) -> list[Finding]:
    """The findings the given suite kinds call for, in FINDERS order (a comparison's first). Each
    finder reads only the rows of the runs whose kind calls for it (df's `kind` column): a ci run
    beside a throughput run is not searched for a throughput run's dense baseline. The ratios
    finder reads every run: it compares them."""
    kinds = list(dict.fromkeys(kinds))
    found: list[Finding] = []
    for name, finder in FINDERS.items():
        if name in SEVERAL_RUNS:
            found += finder(df)
            continue
        wanting = [kind for kind in kinds if name in FINDINGS_BY_KIND.get(kind, FINDERS)]
        if wanting:
            found += finder(df[df["kind"].isin(wanting)] if "kind" in df else df)
    return found
