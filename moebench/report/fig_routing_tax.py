"""Routing tax over granularity: measured phase shares against the analytic shares, with the crossover."""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns

from moebench.accounting import krajewski_router_share
from moebench.report.data import column
from moebench.report.figure_base import (
    COMPUTE_PHASES,
    ROUTING_PHASES,
    Plot,
    finished_rows,
    has_several_runs,
    mathtext_escaped,
    new_axes,
    new_figure,
    text_column,
)

MAX_COLUMNS = 2


def routing_tax(df: pd.DataFrame) -> Plot | None:
    """Stacked per-phase shares of the phase sum over G, with the analytic routing FLOP share of the
    layer and Krajewski et al.'s routing share of a whole block overlaid; the crossover is the first
    G where routing time (router + dispatch + combine) exceeds expert time."""
    d = finished_rows(df)
    d = d[[isinstance(p, dict) and "granularity" in p for p in d["case_params"]]].copy()
    d = d[column(d, "phase_experts_s") > 0]
    if d.empty:
        return None
    d["G"] = [int(p["granularity"]) for p in d["case_params"]]
    multi = has_several_runs(d)
    d["panel"] = [f"{r} · {mathtext_escaped(t)}" if multi else mathtext_escaped(t)
                  for r, t in zip(d["run label"], text_column(d, "spec.dtype"), strict=True)]
    panels = list(dict.fromkeys(d["panel"]))
    # at most two panels a row: wider, the page would shrink the image and its text below legible
    ncols = min(len(panels), MAX_COLUMNS)
    nrows = -(-len(panels) // ncols)
    fig = new_figure(max(7.0, 5.2 * ncols), 4.2 * nrows + 0.4)
    axes = new_axes(fig, nrows, ncols, squeeze=False).ravel()
    crossings = {}
    phases = [p for p in (*ROUTING_PHASES, *COMPUTE_PHASES) if column(d, f"phase_{p}_s").notna().any()]
    colors = dict(zip(phases, sns.color_palette("Set2", len(phases)), strict=True))
    for ax, panel in zip(axes[:len(panels)], panels, strict=True):
        g = d[d["panel"] == panel].sort_values("G")
        times = pd.DataFrame({p: column(g, f"phase_{p}_s").fillna(0).to_numpy() for p in phases},
                             index=g["G"].to_numpy())
        share = times.div(times.sum(axis=1), axis=0)
        share.plot.bar(stacked=True, ax=ax, color=[colors[p] for p in phases], width=0.75, legend=False)
        x = np.arange(len(g))
        ax.plot(x, column(g, "analytic_routing_flop_share"), "k-o", ms=6,
                label="analytic: (router+combine) FLOPs / layer FLOPs")
        kraj = [krajewski_router_share(int(dm), int(ne) // int(G), int(G))
                for dm, ne, G in zip(g["spec.d_model"], g["spec.n_experts"], g["G"], strict=True)]
        ax.plot(x, kraj, "k--s", ms=6, mfc="white", label="Krajewski et al.: routing share of a block")
        routing_s = sum(times[p] for p in ROUTING_PHASES if p in times)
        cross = crossings[panel] = routing_crossover(times.index, routing_s, times["experts"])
        if cross is not None:
            at = list(times.index).index(cross)
            note = " (smallest G measured)" if at == 0 else ""
            ax.axvline(at - 0.5, color="crimson", ls=":", lw=1.5)
            ax.text(at - 0.45, 0.97, f"routing time > expert time\nfrom G={cross}{note}", color="crimson",
                    va="top", fontsize=7, bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})
        ax.set(title=panel, xlabel="granularity G (E·G experts of width F/G, top K·G)",
               ylabel="share of summed phase time", ylim=(0, 1.02))
        ax.tick_params(axis="x", rotation=0)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=7, frameon=False)
    fig.suptitle("Routing tax over granularity: measured phase shares (bars) vs analytic shares (lines)")
    return Plot(fig, d, alt=_alt(d, panels, phases, crossings))


def _alt(d: pd.DataFrame, panels: list[str], phases: list[str], crossings: dict) -> str:
    Gs = ", ".join(str(g) for g in sorted(d["G"].unique()))
    cross = "; ".join(f"{p}: " + (f"from G = {c}" if c is not None else "never, over the G measured")
                      for p, c in crossings.items())
    return (f"Stacked bars of each phase's share of the summed phase time ({', '.join(phases)}) against granularity "
            f"G ({Gs}), one panel per {'run and ' if has_several_runs(d) else ''}dtype: {'; '.join(panels)}. "
            "Lines: the analytic routing FLOP share of the layer and Krajewski et al.'s routing share of a block. "
            f"Routing time above expert time: {cross}.")


def routing_crossover(G, routing_s, experts_s):
    """The first G (ascending) where routing time (router + dispatch + combine) exceeds expert time;
    None when it never does."""
    for g, r, e in sorted(zip(G, routing_s, experts_s, strict=True)):
        if r > e:
            return g
    return None


# --- capacity and drops ---------------------------------------------------------------------------
