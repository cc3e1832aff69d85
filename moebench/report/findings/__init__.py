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

# The subject modules import Finding from here, so they are imported once it exists.
from moebench.report.findings import lifelong, memory, models, routers, throughput  # noqa: E402

FINDERS: dict[str, Finder] = {  # name: finder; one module per subject
    "throughput": throughput.fastest_backend,
    "hot_paths": throughput.hot_path_spread,
    "models": models.preset_speed,
    "routers": routers.router_cost_and_balance,
    "memory": memory.peak_against_bound,
    "lifelong": lifelong.freezing_saving,
}

# "mixed" (quick) and unknown kinds get every finder; a finder with nothing to say returns [].
FINDINGS_BY_KIND: dict[str, tuple[str, ...]] = {
    "throughput": ("throughput",),
    "ci": ("hot_paths",),
    "models": ("models",),
    "routers": ("routers",),
    "memory": ("memory",),
    "lifelong": ("lifelong",),
}


def findings_for(df: pd.DataFrame, kinds: Iterable[str]) -> list[Finding]:
    """The findings the given suite kinds call for, in FINDERS order. Each finder reads only the rows of
    the runs whose kind calls for it (df's `kind` column): a ci run beside a throughput run is not
    searched for a throughput run's dense baseline."""
    kinds = list(dict.fromkeys(kinds))
    found: list[Finding] = []
    for name, finder in FINDERS.items():
        wanting = [kind for kind in kinds if name in FINDINGS_BY_KIND.get(kind, FINDERS)]
        if wanting:
            found += finder(df[df["kind"].isin(wanting)] if "kind" in df else df)
    return found
