"""Throughput by variant and backend, beside the ceiling measured in the same run.

One bar per case keeps the figure's height proportional to the suite. Up to MAX_HEIGHT_IN the bars
thin (down to MIN_BAR_IN, where the labels still fit); beyond, each panel shows its fastest cases
and says so in its title and the alt text (every case stays in the "All cases" table)."""

from __future__ import annotations

import pandas as pd
import seaborn as sns

from moebench.report.data import column
from moebench.report.figure_base import (
    Plot,
    case_label,
    finished_rows,
    has_several_runs,
    log_ticks,
    mathtext_escaped,
    new_axes,
    new_figure,
    run_colors,
    spans_decades,
    text_column,
)

MAX_HEIGHT_IN = 36.0  # 2880 px at the report's 80 DPI
BAR_IN, MIN_BAR_IN = 0.28, 0.16  # a case row's height: as drawn for small suites, and the least that fits its label


def throughput(df: pd.DataFrame) -> Plot | None:
    """Tokens/s per case, and the expert FLOP rate against the same run's measured dense-GEMM
    ceiling (frac_of_ceiling = expert FLOP rate / ceiling, so rate = frac * ceiling)."""
    d = finished_rows(df)
    d = d[column(d, "tokens_per_s") > 0].copy()
    if d.empty:
        return None
    d["group"] = [mathtext_escaped(f"{m}, {t}, T={n}") for m, t, n in
                  zip(text_column(d, "workload.mode"), text_column(d, "spec.dtype"), text_column(d, "workload.tokens"),
                      strict=True)]
    d["case"] = [case_label(p, ("mode", "dtype", "tokens")) for p in d["case_params"]]
    d["tokens/s"] = column(d, "tokens_per_s")
    d["expert GFLOP/s"] = column(d, "frac_of_ceiling") * column(d, "ceiling_flops_per_s") / 1e9
    d["ceiling GFLOP/s"] = column(d, "ceiling_flops_per_s") / 1e9
    groups = list(dict.fromkeys(d["group"]))
    multi = has_several_runs(d)
    runs_per_row = d["run"].nunique() if multi else 1
    bar_in, keep = bar_height(len(groups), d.groupby("group")["case"].nunique().max(), runs_per_row)
    d, notes = _fastest_cases(d, groups, keep)
    sizes = [d.loc[d["group"] == g, "case"].nunique() for g in groups]
    per_bar = bar_in * runs_per_row
    fig = new_figure(11, 1.0 + sum(0.6 + per_bar * s for s in sizes))
    axes = new_axes(fig, len(groups), 2, squeeze=False, sharex="col",
                 gridspec_kw={"height_ratios": [0.6 + per_bar * s for s in sizes]})
    log_tps = spans_decades(d["tokens/s"])
    runs = run_colors(d)
    # a fixed run -> colour map, so a run keeps its colour in panels where another run is missing
    first = runs[d["run label"].iloc[0]]
    hue = {"hue": "run label", "hue_order": list(runs), "palette": runs} if multi else {"color": first}
    for i, group in enumerate(groups):
        g = d[d["group"] == group]
        left, right = axes[i]
        sns.barplot(g, x="tokens/s", y="case", ax=left, errorbar=None, legend=False, **hue)
        left.set(title=group + notes[group], ylabel="",
                 xlabel="tokens/s (median latency)" + (", log" if log_tps else ""),
                 xscale="log" if log_tps else "linear")
        if log_tps:
            log_ticks(left.xaxis, d["tokens/s"])
        if g["ceiling GFLOP/s"].notna().any():
            sns.barplot(g, x="expert GFLOP/s", y="case", ax=right, errorbar=None, legend=False, **hue)
            # the ceiling as a dashed outline drawn over the bar, so it shows where a bar passes it
            sns.barplot(g, x="ceiling GFLOP/s", y="case", ax=right, errorbar=None, fill=False, legend=False,
                        linestyle="--", linewidth=1.2, **(hue if multi else {"color": "0.2"}))
        right.set(title=group, ylabel="", yticklabels=[], xlabel="expert GFLOP/s (bars) vs ceiling (dashed)")
    bar_color = "0.55" if multi else first
    handles = [_legend_patch("bars: expert FLOPs / median latency", bar_color, True),
               _legend_patch("dashed: measured ceiling, dense GEMM of the same rows, same run", "0.2", False)]
    if multi:  # the run colours, in the figure legend below the panels, off the bars
        handles += [_legend_patch(f"run {run}", color, True) for run, color in runs.items()]
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    fig.suptitle("Throughput by variant and dispatch backend")
    return Plot(fig, d, alt=_alt(d, groups, notes))


def bar_height(groups: int, largest_group: int, runs_per_row: int) -> tuple[float, int | None]:
    """(inches per bar, the most cases a panel may show or None for all) so that the figure stays
    under MAX_HEIGHT_IN: bars thin first, down to MIN_BAR_IN; panels keep their fastest cases after."""
    room = MAX_HEIGHT_IN - 1.0 - 0.6 * groups
    bar_in = room / (groups * largest_group * runs_per_row)
    if bar_in >= MIN_BAR_IN:
        return min(BAR_IN, bar_in), None
    return MIN_BAR_IN, max(1, int(room / (groups * runs_per_row * MIN_BAR_IN)))


def _fastest_cases(d: pd.DataFrame, groups: list[str], keep: int | None) -> tuple[pd.DataFrame, dict[str, str]]:
    """The rows of each group's `keep` fastest cases (by their best run), and each group's title note."""
    notes = dict.fromkeys(groups, "")
    if keep is None:
        return d, notes
    kept = []
    for group in groups:
        g = d[d["group"] == group]
        best = g.groupby("case", sort=False)["tokens/s"].max().sort_values(ascending=False)
        if len(best) > keep:
            notes[group] = f" (the {keep} fastest of {len(best)} cases; all in the table)"
        kept.append(g[g["case"].isin(best.index[:keep])])
    return pd.concat(kept), notes


def _alt(d: pd.DataFrame, groups: list[str], notes: dict[str, str]) -> str:
    top = d.loc[d["tokens/s"].idxmax()]
    cut = [f"{g}{n}" for g, n in notes.items() if n]
    cut_note = " Panels cut to their fastest cases: " + "; ".join(cut) + "." if cut else ""
    return ("Horizontal bars, one row of panels per workload (mode, dtype, T): " + "; ".join(groups)
            + ". Left: tokens per second at the median latency, one bar per case. Right: the expert GFLOP/s of "
            "each case against the dense-GEMM ceiling measured in the same run (dashed outline). "
            f"{d['case_id'].nunique()} cases drawn; the fastest, {_plain(top['case'])} ({_plain(top['group'])}), at "
            f"{top['tokens/s']:,.0f} tokens/s." + cut_note)


def _plain(label: str) -> str:
    """A label as the reader sees it: matplotlib's escaped dollar signs printed plain."""
    return label.replace("\\$", "$")


def _legend_patch(label: str, color, filled: bool):
    from matplotlib.patches import Patch
    if filled:
        return Patch(facecolor=color, label=label)
    return Patch(facecolor="none", edgecolor=color, linestyle="--", label=label)


# --- routing tax over granularity -----------------------------------------------------------------
