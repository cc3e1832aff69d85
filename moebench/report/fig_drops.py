"""Drops against capacity factor: the dropped count and the dropped routing-weight mass per routing
distribution and drop policy, with the binomial reference for the count.

One facet per (variant, E, K, T), two rows each: the fraction of assignments dropped (`drop_rate`) on
top, the fraction of routing weight they carried (`dropped_weight_frac`) below. Both policies share a
facet (linestyle = policy): their counts coincide by construction, so the top row shows one line per
routing and the bottom row shows where `probs` really drops lighter assignments than `position`.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D

from moebench.report.data import column
from moebench.report.figure_base import (
    PAGE_WIDTH_IN,
    Plot,
    finished_rows,
    mathtext_escaped,
    new_axes,
    new_figure,
    text_column,
)
from moebench.report.findings.describe import OWN_ROUTER
from moebench.routing.capacity import expected_drop_fraction_uniform

FACETS_PER_ROW = 4
POLICY_STYLES = {"position": "-", "probs": (0, (5, 2))}  # other policy names get dotted-dashed
RUN_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
REFERENCE_STYLE = {"color": "black", "ls": ":", "lw": 1.6, "zorder": 5}
ROWS = (("drop rate", "dropped assignments\n(drop_rate)"),
        ("dropped weight", "dropped routing-weight mass\n(dropped_weight_frac)"))


def _distribution(row) -> str:
    name = row.get("workload.routing") or "router"
    if name == "router":
        return OWN_ROUTER
    extra = (row.get("case_params") or {}).get("routing_params") or {}
    return mathtext_escaped(" ".join([str(name), *(f"{k}={v}" for k, v in sorted(extra.items()))]))


def uniform_reference(T: int, E: int, K: int, cfs, min_capacity: int = 0) -> list[float]:
    """The binomial expectation of the dropped fraction under uniform routing at each CF."""
    return [expected_drop_fraction_uniform(T, E, K, float(cf), min_capacity) for cf in cfs]


def line_id(routing: str, policy: str, run: str) -> str:
    """The gid of one drawn series: tests and readers of the figure object find a line by it."""
    return f"{routing}|{policy}|{run}"


def panel_id(facet: str, value: str) -> str:
    """The gid of one panel: its facet and what it plots ("drop rate" or "dropped weight")."""
    return f"{facet}|{value}"


def _drop_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Finished cases with a capacity and a drop rate (expert choice refuses nothing: left out)."""
    d = finished_rows(df)
    d = d[column(d, "spec.capacity_factor").notna() & column(d, "drop_rate").notna()].copy()
    if "spec.variant" in d:
        d = d[d["spec.variant"] != "expert_choice"]
    if d.empty:
        return d
    d["capacity factor"] = column(d, "spec.capacity_factor").astype(float)
    d["drop rate"] = column(d, "drop_rate").astype(float)
    d["dropped weight"] = column(d, "dropped_weight_frac").astype(float)
    d["routing"] = [_distribution(r) for _, r in d.iterrows()]
    d["policy"] = text_column(d, "spec.drop_policy")
    d["T"] = column(d, "workload.tokens").fillna(0).astype(int) * column(d, "workload.batch").fillna(1).astype(int)
    d["variant"] = text_column(d, "spec.variant")
    d["E"], d["K"] = column(d, "spec.n_experts").fillna(0).astype(int), column(d, "spec.top_k").fillna(0).astype(int)
    d["min C"] = column(d, "spec.min_capacity").fillna(0).astype(int)
    # min_capacity is part of the facet: the binomial reference depends on it
    d["facet"] = [mathtext_escaped(f"{v}, E={_known(e)}, K={_known(k)}, T={_known(t)}"
                                   + (f", min C={c}" if c else "")) for v, e, k, t, c in
                  zip(d["variant"], d["E"], d["K"], d["T"], d["min C"], strict=True)]
    return d


def _known(n: int) -> str:
    return str(n) if n > 0 else "?"  # 0 stands for a field the record lacks


def drops(df: pd.DataFrame) -> Plot | None:
    """Measured drop rate and dropped routing-weight mass against capacity factor, per routing
    distribution and drop policy, one facet per (variant, E, K, T), beside the binomial expectation
    of the drop rate under uniform routing."""
    d = _drop_rows(df)
    if d.empty:
        return None
    # numeric order (E=8 before E=64), not the order of the facet titles as text
    order = d.sort_values(["variant", "E", "K", "T", "min C"])
    facets = list(dict.fromkeys(order["facet"]))
    ncols = min(len(facets), FACETS_PER_ROW)
    blocks = math.ceil(len(facets) / ncols)
    # at most PAGE_WIDTH_IN wide, the legend below: the page never scales the figure (or its text) down
    fig = new_figure(min(3.3 * ncols + 0.6, PAGE_WIDTH_IN), 2.6 * 2 * blocks + 1.5)
    axes = new_axes(fig, 2 * blocks, ncols, squeeze=False, sharex=True, sharey=True)
    routings = sorted(d["routing"].unique())
    colors = dict(zip(routings, sns.color_palette(n_colors=len(routings)), strict=True))
    runs = list(dict.fromkeys(d["run label"]))
    markers = {run: RUN_MARKERS[i % len(RUN_MARKERS)] for i, run in enumerate(runs)}
    for i, facet in enumerate(facets):
        block, col = divmod(i, ncols)
        g = d[d["facet"] == facet]
        for row, (value, label) in enumerate(ROWS):
            ax = axes[2 * block + row, col]
            ax.set_gid(panel_id(facet, value))
            _draw_series(ax, g, value, colors, markers)
            if row == 0:
                _draw_reference(ax, g)
            elif g[value].isna().all():
                ax.text(0.5, 0.5, "not recorded\n(results older than the metric)", transform=ax.transAxes,
                        ha="center", va="center", fontsize=8, color="0.4")
            ax.set_title(facet if row == 0 else "", fontsize=9)
            ax.set_ylabel(label if col == 0 else "")
            ax.set_xlabel("capacity factor CF" if row == 1 else "")
            if row == 1:
                ax.tick_params(labelbottom=True)  # sharex hides them on every row but the last
    for i in range(len(facets), blocks * ncols):
        block, col = divmod(i, ncols)
        axes[2 * block, col].set_visible(False)
        axes[2 * block + 1, col].set_visible(False)
    fig.legend(handles=_legend_handles(d, colors, markers), loc="outside lower center", fontsize=8, frameon=False,
               handlelength=3.2, ncols=4)
    fig.suptitle("Drops against capacity factor, C = ceil(CF·T·K/E)")
    return Plot(fig, d, alt=_alt_text(d, facets, routings, runs))


def _draw_series(ax, g: pd.DataFrame, value: str, colors: dict, markers: dict) -> None:
    """One line per (routing, policy, run) through its points in CF order; a lone point shows too."""
    for (routing, policy, run), s in g.groupby(["routing", "policy", "run label"], sort=True):
        s = s[s[value].notna()].sort_values("capacity factor")
        if s.empty:
            continue
        ax.plot(s["capacity factor"], s[value], color=colors[routing], ls=POLICY_STYLES.get(policy, "-."),
                marker=markers[run], markersize=5, lw=1.5, gid=line_id(routing, policy, run))


def _draw_reference(ax, g: pd.DataFrame) -> None:
    """The binomial expectation for this facet's (T, E, K, min_capacity), which every series in it shares."""
    first = g.iloc[0]
    if min(first["T"], first["E"], first["K"]) < 1:  # a record without its shape: no reference to compute
        return
    lo, hi = g["capacity factor"].min(), g["capacity factor"].max()
    cfs = np.linspace(min(lo, 0.5), max(hi, 2.0), 31)
    ref = uniform_reference(int(first["T"]), int(first["E"]), int(first["K"]), cfs, int(first["min C"]))
    # drawn over the points: measured uniform routing lies on it and would hide it
    ax.plot(cfs, ref, gid="binomial reference", **REFERENCE_STYLE)


def _legend_handles(d: pd.DataFrame, colors: dict, markers: dict) -> list[Line2D]:
    handles = [Line2D([], [], color=c, lw=2, label=r) for r, c in colors.items()]
    handles += [Line2D([], [], color="0.3", ls=POLICY_STYLES.get(p, "-."), lw=1.5, label=f"{p} policy")
                for p in sorted(d["policy"].unique())]
    if len(markers) > 1:
        handles += [Line2D([], [], color="0.3", ls="", marker=m, label=run) for run, m in markers.items()]
    handles.append(Line2D([], [], label="binomial expectation,\nuniform routing (drop rate)", **REFERENCE_STYLE))
    return handles


def _alt_text(d: pd.DataFrame, facets: list[str], routings: list[str], runs: list[str]) -> str:
    policies = sorted(d["policy"].unique())
    text = (f"Line charts against capacity factor, {len(facets)} facet(s) ({'; '.join(facets)}), each with two "
            f"panels: the fraction of (token, expert) assignments dropped, with the binomial expectation under "
            f"uniform routing, and the fraction of routing weight those assignments carried. One line per "
            f"routing distribution (colour: {', '.join(routings)}) and drop policy "
            f"({', '.join(_style_name(p) for p in policies)})")
    if len(runs) > 1:
        text += f", one marker per run ({', '.join(runs)})"
    return text.replace("\n", " ").replace("\\$", "$") + "."


def _style_name(policy: str) -> str:
    return {"position": "solid", "probs": "dashed"}.get(policy, "dash-dotted") + f": {policy}"
