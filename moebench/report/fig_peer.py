"""PEER latency against N on log axes, product keys against brute force, with the bandwidth floor."""

from __future__ import annotations

import pandas as pd

from moebench.report.data import column
from moebench.report.figure_base import (
    Plot,
    draw_run_lines,
    finished_rows,
    log_ticks,
    mathtext_escaped,
    new_axes,
    new_figure,
    run_colors,
    text_column,
)


def peer(df: pd.DataFrame) -> Plot | None:
    """PEER median latency against the number of experts N on log-log axes, product keys against
    brute force, with the bandwidth floor: the expert rows each step must read, at copy bandwidth."""
    d = finished_rows(df)
    if "spec.variant" not in d:
        return None
    d = d[(d["spec.variant"] == "peer") & (column(d, "latency_s") > 0)].copy()
    if d.empty:
        return None
    d["N experts"] = column(d, "spec.peer_experts")
    d["latency (s)"] = column(d, "latency_s")
    d["floor (s)"] = column(d, "floor_s").fillna(column(d, "bandwidth_floor_s"))
    d["retrieval"] = [mathtext_escaped(f"{r}, heads={h}, k={k}, D={dm}") for r, h, k, dm in
                      zip(text_column(d, "spec.peer_retrieval"), d["spec.peer_heads"], d["spec.peer_k"],
                          d["spec.d_model"], strict=True)]
    fig = new_figure(8.5, 5)
    ax = new_axes(fig)
    draw_run_lines(d, "N experts", "latency (s)", "retrieval", list(run_colors(d)), ax)
    floor = d.groupby("N experts")["floor (s)"].min().dropna()
    if not floor.empty:
        ax.plot(floor.index, floor.to_numpy(), color="0.2", ls="--", marker="v", ms=7,
                label="bandwidth floor: expert rows read / copy bandwidth")
    ax.set(xscale="log", yscale="log", xlabel="number of experts N (log)", ylabel="median latency per step, s (log)",
           title="PEER: product-key retrieval vs brute force")
    log_ticks(ax.xaxis, d["N experts"])
    log_ticks(ax.yaxis, [*d["latency (s)"], *d["floor (s)"]])
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return Plot(fig, d)


# --- memory ---------------------------------------------------------------------------------------
