"""Throughput by variant and backend, beside the ceiling measured in the same run."""

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
    sizes = [d.loc[d["group"] == g, "case"].nunique() for g in groups]
    multi = has_several_runs(d)
    per_bar = 0.28 * (d["run"].nunique() if multi else 1)
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
        left.set(title=group, ylabel="", xlabel="tokens/s (median latency)" + (", log" if log_tps else ""),
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
    return Plot(fig, d)


def _legend_patch(label: str, color, filled: bool):
    from matplotlib.patches import Patch
    if filled:
        return Patch(facecolor=color, label=label)
    return Patch(facecolor="none", edgecolor=color, linestyle="--", label=label)


# --- routing tax over granularity -----------------------------------------------------------------
