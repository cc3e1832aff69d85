"""Drop rate against capacity factor per routing distribution, with the binomial reference."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from moebench.report.data import column
from moebench.report.figure_base import (
    Plot,
    draw_run_lines,
    finished_rows,
    mathtext_escaped,
    new_axes,
    new_figure,
    run_colors,
    text_column,
)
from moebench.routing.capacity import expected_drop_fraction_uniform


def _distribution(row) -> str:
    name = row.get("workload.routing") or "router"
    if name == "router":
        return "layer's own router (not forced)"
    extra = (row.get("case_params") or {}).get("routing_params") or {}
    return mathtext_escaped(" ".join([str(name), *(f"{k}={v}" for k, v in sorted(extra.items()))]))


def uniform_reference(T: int, E: int, K: int, cfs, min_capacity: int = 0) -> list[float]:
    """The binomial expectation of the dropped fraction under uniform routing at each CF."""
    return [expected_drop_fraction_uniform(T, E, K, float(cf), min_capacity) for cf in cfs]


def drops(df: pd.DataFrame) -> Plot | None:
    """Measured drop rate against capacity factor per routing distribution, per (E, K, policy),
    beside the binomial expectation for uniform routing."""
    d = finished_rows(df)
    d = d[column(d, "spec.capacity_factor").notna() & column(d, "drop_rate").notna()].copy()
    if "spec.variant" in d:
        d = d[d["spec.variant"] != "expert_choice"]
    if d.empty:
        return None
    d["capacity factor"] = column(d, "spec.capacity_factor")
    d["drop rate"] = column(d, "drop_rate")
    d["routing"] = [_distribution(r) for _, r in d.iterrows()]
    d["T"] = column(d, "workload.tokens").fillna(0).astype(int) * column(d, "workload.batch").fillna(1).astype(int)
    d["panel"] = [mathtext_escaped(f"{v}, E={e}, K={k}\n{p} policy, T={t}") for v, e, k, p, t in
                  zip(text_column(d, "spec.variant"), d["spec.n_experts"], d["spec.top_k"],
                      text_column(d, "spec.drop_policy"),
                      d["T"], strict=True)]
    panels = sorted(dict.fromkeys(d["panel"]))
    ncols = min(len(panels), 4)
    nrows = math.ceil(len(panels) / ncols)
    fig = new_figure(3.6 * ncols + 1.8, 3.0 * nrows + 0.6)
    axes = new_axes(fig, nrows, ncols, squeeze=False, sharey=True).ravel()
    hue_order = sorted(d["routing"].unique())
    for ax, panel in zip(axes[:len(panels)], panels, strict=True):
        g = d[d["panel"] == panel]
        first = g.iloc[0]
        lo, hi = g["capacity factor"].min(), g["capacity factor"].max()
        cfs = np.linspace(min(lo, 0.5), max(hi, 2.0), 31)
        ref = uniform_reference(int(first["T"]), int(first["spec.n_experts"]), int(first["spec.top_k"]), cfs,
                                int(first.get("spec.min_capacity") or 0))
        # drawn over the points: measured uniform routing lies on it and would hide it
        ax.plot(cfs, ref, color="black", ls=(0, (4, 3)), lw=1.2, zorder=5,
                label="binomial expectation, uniform routing")
        draw_run_lines(g, "capacity factor", "drop rate", "routing", list(run_colors(d)), ax, hue_order=hue_order,
               legend=ax is axes[0])
        ax.set(title=panel, xlabel="capacity factor CF", ylabel="drop rate (assignments not computed)")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    if axes[0].get_legend() is not None:
        handles, labels = axes[0].get_legend_handles_labels()
        axes[0].get_legend().remove()
        fig.legend(handles, labels, loc="outside right upper", fontsize=7, frameon=False, handlelength=3,
                   markerscale=0.8)
    fig.suptitle("Drops against capacity factor (C = ceil(CF·T·K/E))")
    return Plot(fig, d)


# --- expert load ----------------------------------------------------------------------------------
