"""Per-case ratios of two or more runs: each case's median time per step in another run over its median
in the first run given (the baseline), with the 95% CI and the verdict that `moebench compare` gives
the same pair of records.

The numbers are compare's, not re-derived: cases are paired by case id (the last record of a retried
case), each pair goes through compare.case_verdicts at compare's default threshold and alpha, and a
pair compare would refuse (a record it cannot use, another dtype, a case that did not finish, fewer
than 2 samples a side) is listed as not compared with compare's reason. One difference: runs on
different devices (CPU against GPU), which compare refuses as a whole, are compared here on wall
latency, since the CPU time of a process that waits for a GPU measures the wait, not the GPU.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import pandas as pd
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

from moebench import compare
from moebench.compare import DEFAULT_ALPHA, DEFAULT_THRESHOLD, Verdict
from moebench.report.figure_base import (
    PAGE_WIDTH_IN,
    Plot,
    case_label,
    log_ticks,
    mathtext_escaped,
    new_axes,
    new_figure,
)

PANEL_CASES = 60  # most cases in one panel: more are split over several panels, never cut
VERDICT_COLORS = {"SLOW": "#c62828", "FAST": "#2e7d32", "SAME": "#757575", "AMBIGUOUS": "#e08000",
                  "CHANGED": "#6a1b9a"}  # CHANGED: another implementation ran (the ratio is information)
VERDICT_ORDER = tuple(VERDICT_COLORS)
RUN_MARKERS = ("o", "s", "^", "D", "v", "P", "X")
RATIO_TICKS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 0.67, 0.8, 0.9, 1, 1.1, 1.25, 1.5, 2, 5, 10, 20, 50, 100)
FINE_TICKS = (0.67, 0.8, 0.9, 1.1, 1.25, 1.5)
METRIC_NAMES = {"cpu_s": "CPU time", "latency_s": "latency"}


@dataclass
class Comparison:
    """One other run against the baseline: compare's timing verdict of every case it could compare."""

    baseline: str  # run labels
    run: str
    mode: str  # compare's `metric` argument: "auto", or "latency_s" when the devices differ
    verdicts: list[Verdict] = field(default_factory=list)  # each with a ratio and its CI
    keys: dict[str, str] = field(default_factory=dict)  # case id -> the per-step series judged
    not_compared: list[tuple[str, str]] = field(default_factory=list)  # (case id, why)
    only_baseline: list[str] = field(default_factory=list)
    only_run: list[str] = field(default_factory=list)

    @property
    def metric(self) -> str:
        """The series judged, in words: "CPU time", "latency", or both where cases differ."""
        names = {METRIC_NAMES.get(k, k) for k in self.keys.values()}
        return names.pop() if len(names) == 1 else "time (CPU time where both runs recorded it, else latency)"

    def counts(self) -> dict[str, int]:
        """Cases per verdict, in VERDICT_ORDER, zero counts left out."""
        n = Counter(v.verdict for v in self.verdicts)
        return {k: n[k] for k in VERDICT_ORDER if n[k]} | {k: c for k, c in n.items() if k not in VERDICT_ORDER}

    def summary(self) -> str:
        """'latency ratio of B over A for 6 cases: 1 SLOW, 5 SAME'."""
        shown = ", ".join(f"{n} {k}" for k, n in self.counts().items())
        cases = count_of_cases(len(self.verdicts))
        return f"{self.metric} ratio of {self.run} over {self.baseline} for {cases}: {shown}"

    def unmatched(self) -> str:
        """The cases left out of the ratios and why, every one named; '' when none."""
        parts = []
        if self.not_compared:
            parts.append(f"not compared ({len(self.not_compared)}): "
                         + "; ".join(f"{c} ({why})" for c, why in self.not_compared))
        if self.only_baseline:
            parts.append(f"only in {self.baseline} ({len(self.only_baseline)}): " + "; ".join(self.only_baseline))
        if self.only_run:
            parts.append(f"only in {self.run} ({len(self.only_run)}): " + "; ".join(self.only_run))
        return ". ".join(parts)


def count_of_cases(n: int) -> str:
    return f"{n} case" if n == 1 else f"{n} cases"


def comparisons(df: pd.DataFrame) -> list[Comparison]:
    """Every run after the first against the first; [] with fewer than two runs."""
    if df.empty:
        return []
    names = list(dict.fromkeys(df["run"]))
    base = df[df["run"] == names[0]]
    return [compare_with_baseline(base, df[df["run"] == name]) for name in names[1:]]


def compare_with_baseline(base: pd.DataFrame, other: pd.DataFrame) -> Comparison:
    """compare's verdict for every case both runs hold (in the baseline's order), the rest listed."""
    devices = {str(d) for d in pd.concat([base, other])["run.device"].dropna()} if "run.device" in base else set()
    mode = "latency_s" if len(devices) > 1 else "auto"
    result = Comparison(str(base["run"].iloc[0]), str(other["run"].iloc[0]), mode)
    base_records = dict(zip(base["case_id"], base["case_record"], strict=True))
    other_records = dict(zip(other["case_id"], other["case_record"], strict=True))
    result.only_run = [c for c in other_records if c not in base_records]
    for case_id, b in base_records.items():
        c = other_records.get(case_id)
        if c is None:
            result.only_baseline.append(case_id)
            continue
        why = _not_comparable(b, c)
        verdict = None if why else compare.case_verdicts(case_id, b, c, DEFAULT_THRESHOLD, DEFAULT_ALPHA,
                                                         metric=mode)[0]
        if verdict is not None and verdict.ratio is None:
            why = f"{verdict.verdict}: {verdict.note}"
        if why:
            result.not_compared.append((case_id, why))
        else:
            result.verdicts.append(verdict)
            result.keys[case_id] = compare.timing_key(b, c, mode)
    return result


def _not_comparable(b: dict, c: dict) -> str:
    """Why compare would refuse this pair of records ('' when it would not)."""
    for side, record in (("baseline", b), ("other run", c)):
        problem = compare.record_problem(record)
        if problem:
            return f"{side}: {problem}"
    b_dtype, c_dtype = (r.get("spec", {}).get("dtype") for r in (b, c))
    return f"dtype differs: {b_dtype} against {c_dtype}" if b_dtype != c_dtype else ""


# --- the figure -----------------------------------------------------------------------------------

def ratios(df: pd.DataFrame) -> Plot | None:
    """Each case's ratio (log x) with its CI as a bar, one marker per other run, coloured by verdict,
    over the SAME band of compare's threshold; the largest ratio on top, at most PANEL_CASES a panel."""
    every = comparisons(df)
    comps = [c for c in every if c.verdicts]
    if not comps:
        return None
    order = case_order(comps)
    labels, common = short_labels(df, order)
    panels = split_evenly(order, PANEL_CASES)
    per_panel = len(panels[0])
    # Panels stacked at the page's width (13.8 in at the report's 80 dpi = 1104 px, within the page's
    # 1150 px less its padding): shown unscaled, the 7-point labels stay legible however many panels.
    fig = new_figure(PAGE_WIDTH_IN, len(panels) * (0.17 * per_panel + 1.1) + 1.2)
    axes = new_axes(fig, len(panels), 1, sharex=True, squeeze=False).ravel()
    ratios_drawn = [v.ratio for comp in comps for v in comp.verdicts]
    for i, (ax, cases) in enumerate(zip(axes, panels, strict=True)):
        _draw_panel(ax, comps, cases, labels, per_panel)
        first = sum(len(p) for p in panels[:i]) + 1
        if len(panels) > 1:
            ax.set_title(f"cases {first}–{first + len(cases) - 1} of {len(order)}", fontsize=9)
    lows = [v.ci_low for comp in comps for v in comp.verdicts]
    highs = [v.ci_high for comp in comps for v in comp.verdicts]
    _set_ratio_axis(axes[0], [*ratios_drawn, *lows, *highs])
    for ax in axes:
        ax.set_xlabel(_axis_label(comps), fontsize=8)
        ax.tick_params(axis="x", labelbottom=True)
    _legend(fig, comps)
    fig.suptitle(_title(comps, common), fontsize=10)
    runs = {comps[0].baseline, *(c.run for c in comps)}
    drawn = df[df["run"].isin(runs) & df["case_id"].isin(order)]
    return Plot(fig, drawn, alt=alt_text(comps), note=note_text(every))


def case_order(comps: list[Comparison]) -> list[str]:
    """The compared case ids, the largest ratio over the other runs first (the worst regression reads
    first), ties in the baseline's order."""
    worst: dict[str, float] = {}
    for comp in comps:
        for v in comp.verdicts:
            worst[v.case_id] = max(worst.get(v.case_id, 0.0), v.ratio)
    return sorted(worst, key=lambda c: -worst[c])


def split_evenly(items: list, most: int) -> list[list]:
    """items in the fewest consecutive groups of at most `most`, as even in size as can be."""
    groups = max(1, math.ceil(len(items) / most))
    size = math.ceil(len(items) / groups)
    return [items[i:i + size] for i in range(0, len(items), size)]


def short_labels(df: pd.DataFrame, case_ids: list[str]) -> tuple[dict[str, str], str]:
    """A label per case (figure_base.case_label of its suite axes) without the axes every drawn case
    shares, which are returned apart ("n_experts=8, top_k=2") for the title; the case id where a case
    has no axes."""
    params = {}
    for case_id, p in zip(df["case_id"], df["case_params"], strict=True):
        if case_id in case_ids and case_id not in params:
            params[case_id] = p if isinstance(p, dict) else {}
    shared = set.intersection(*(set(_items(p)) for p in params.values())) if len(params) > 1 else set()
    drop = tuple(k for k, _ in shared)
    labels = {c: case_label(params[c], drop) if params[c] else mathtext_escaped(c) for c in case_ids}
    common = ", ".join(f"{k}={v}" for k, v in sorted(shared))
    return labels, mathtext_escaped(common)


def _items(params: dict) -> list[tuple[str, str]]:
    return [(str(k), str(v)) for k, v in params.items()]


def _draw_panel(ax, comps: list[Comparison], cases: list[str], labels: dict[str, str], per_panel: int) -> None:
    """One row per case (top to bottom), each other run's ratio offset a little within the row."""
    row = {case_id: i for i, case_id in enumerate(cases)}
    up, down = 1 + DEFAULT_THRESHOLD, 1 / (1 + DEFAULT_THRESHOLD)
    ax.axvspan(down, up, color="0.88", zorder=0)
    ax.axvline(1.0, color="0.3", lw=1, zorder=1)
    for j, comp in enumerate(comps):
        offset = (j - (len(comps) - 1) / 2) * min(0.25, 0.8 / len(comps))
        for verdict, color in VERDICT_COLORS.items():
            mine = [v for v in comp.verdicts if v.case_id in row and v.verdict == verdict]
            if not mine:
                continue
            y = [row[v.case_id] + offset for v in mine]
            ax.hlines(y, [v.ci_low for v in mine], [v.ci_high for v in mine], color=color, lw=1.6, zorder=2)
            ax.scatter([v.ratio for v in mine], y, color=color, marker=RUN_MARKERS[j % len(RUN_MARKERS)], s=22,
                       zorder=3, edgecolors="white", linewidths=0.4)
    ax.set_yticks(range(len(cases)), [labels[c] for c in cases], fontsize=7)
    if len(comps) == 1:
        _numbers_on_the_right(ax, comps[0], row)
    ax.set_ylim(per_panel - 0.5, -0.5)  # every panel the same row height; the first row on top
    ax.grid(axis="y", visible=False)


def _numbers_on_the_right(ax, comp: Comparison, row: dict[str, int]) -> None:
    """Each row's ratio and CI as text at the right edge, in its verdict's colour: a reader should not
    have to read numbers off a log axis. Tick labels of a second axis, so the layout makes room."""
    shown = sorted((v for v in comp.verdicts if v.case_id in row), key=lambda v: row[v.case_id])
    right = ax.secondary_yaxis("right")
    right.set_yticks([row[v.case_id] for v in shown],
                     [f"{v.ratio:.2f} [{v.ci_low:.2f}, {v.ci_high:.2f}]" for v in shown], fontsize=7)
    for label, v in zip(right.get_yticklabels(), shown, strict=True):
        label.set_color(VERDICT_COLORS.get(v.verdict, "0.2"))
    right.tick_params(length=0)


def _set_ratio_axis(ax, values: list[float]) -> None:
    """Log x (shared by every panel) spanning the ratios, their CIs and the threshold band."""
    up, down = 1 + DEFAULT_THRESHOLD, 1 / (1 + DEFAULT_THRESHOLD)
    v = [x for x in values if x is not None and x > 0 and math.isfinite(x)] + [up, down]
    lo, hi = min(v) / (max(v) / min(v)) ** 0.05, max(v) * (max(v) / min(v)) ** 0.05
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    fine = hi / lo <= 8  # 0.9, 1.1 ... crowd each other on a wider axis
    ticks = [t for t in RATIO_TICKS if lo <= t <= hi and (fine or t not in FINE_TICKS)]
    if hi / lo >= 100 or len(ticks) < 3:
        log_ticks(ax.xaxis, [lo, hi])
    else:  # under two decades: ratios a reader knows (0.8 = 20% faster, 1.25 = 25% slower)
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())


def _axis_label(comps: list[Comparison]) -> str:
    metric = comps[0].metric if len({c.metric for c in comps}) == 1 else "time per step"
    run = mathtext_escaped(comps[0].run) if len(comps) == 1 else "RUN"
    base = mathtext_escaped(comps[0].baseline)
    return f"{metric} of {run} / {metric} of {base} (the baseline), log"


def _title(comps: list[Comparison], common: str) -> str:
    runs = ", ".join(mathtext_escaped(c.run) for c in comps)
    title = f"median time per step: {runs} over the baseline {mathtext_escaped(comps[0].baseline)}"
    return title + (f"\nevery case: {common}" if common else "")


def _legend(fig, comps: list[Comparison]) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    shown = {v.verdict for c in comps for v in c.verdicts}
    handles = [Line2D([], [], color=color, marker="o", lw=1.6, label=verdict)
               for verdict, color in VERDICT_COLORS.items() if verdict in shown]
    handles.append(Line2D([], [], color="0.3", marker="o", lw=1.6, label="ratio of medians, bar: its 95% CI"))
    handles.append(Patch(color="0.88", label=f"SAME band (±{DEFAULT_THRESHOLD:.0%}, compare's threshold)"))
    if len(comps) > 1:
        handles += [Line2D([], [], color="0.3", ls="", marker=RUN_MARKERS[j % len(RUN_MARKERS)],
                           label=mathtext_escaped(c.run)) for j, c in enumerate(comps)]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 5), fontsize=8, frameon=False)


def alt_text(comps: list[Comparison]) -> str:
    """One sentence per other run: what is plotted, the verdict counts, and how many cases were left out."""
    sentences = []
    for c in comps:
        left = len(c.not_compared) + len(c.only_baseline) + len(c.only_run)
        tail = f"; {count_of_cases(left)} not compared, listed under the figure" if left else ""
        sentences.append(f"{c.summary()}{tail}.")
    return " ".join(sentences)


def note_text(comps: list[Comparison]) -> str:
    """The cases no ratio was drawn for, every one named, per other run; '' when every case was drawn."""
    parts = [f"{c.run} against {c.baseline}: {c.unmatched()}." for c in comps if c.unmatched()]
    return " ".join(parts)
