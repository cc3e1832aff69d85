"""Roofline: each case by arithmetic intensity against achieved FLOP/s, under its own run's ceilings."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import seaborn as sns

from moebench.report.data import column
from moebench.report.figure_base import (
    Plot,
    finished_rows,
    log_ticks,
    mathtext_escaped,
    new_axes,
    new_figure,
    text_column,
)

MAX_POINT_LABELS = 10
SHORT_NAMES = {"granularity": "G", "peer_experts": "N", "peer_heads": "H", "peer_k": "k", "d_model": "D",
               "n_experts": "E", "top_k": "K"}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")


def roofline_cases(df: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """The cases a roofline can place, with "intensity" (FLOP/byte) and "achieved" (FLOP/s), and the
    number left out by reason.

    FLOPs are `computed_flops` (the work that ran: accounting.layer_computed_flops; `flops` in older
    records), achieved FLOP/s those over `latency_s`; bytes are the analytic bytes
    one forward moves: `predicted_bytes_moved`, or `bandwidth_floor_s` x `copy_bandwidth_bytes_per_s`
    where memory was not measured (the same sum of accounting.layer_bytes). Training steps are left
    out: their `flops` count the backward (3x forward) while the bytes are a forward's, so the two
    do not describe the same work.
    """
    d = finished_rows(df)
    left_out: dict[str, int] = {}
    mode = text_column(d, "workload.mode")
    training = mode.isin(["forward_backward", "train_step"])
    if training.any():
        left_out["training steps (FLOPs count the backward, bytes a forward only)"] = int(training.sum())
    d = d[~training].copy()
    bytes_moved = column(d, "predicted_bytes_moved")
    bytes_moved = bytes_moved.where(bytes_moved > 0,
                                    column(d, "bandwidth_floor_s") * column(d, "copy_bandwidth_bytes_per_s"))
    # the work that ran (a capacity's dropped assignments not credited, padded slots counted); records
    # from before `computed_flops` existed fall back to the useful `flops`
    flops = column(d, "computed_flops").where(column(d, "computed_flops") > 0, column(d, "flops"))
    achieved = flops / column(d, "latency_s")
    placeable = (flops > 0) & (bytes_moved > 0) & (achieved > 0) & np.isfinite(flops / bytes_moved * achieved)
    if (~placeable).any():
        left_out["cases without analytic FLOPs, bytes or a latency"] = int((~placeable).sum())
    d["intensity"] = flops / bytes_moved
    d["achieved"] = achieved
    return d[placeable].copy(), left_out


def panel_ceilings(g: pd.DataFrame) -> tuple[float, float]:
    """(compute roof in FLOP/s, bandwidth in bytes/s) of one panel, NaN where none was measured.

    The roof is the highest dense-GEMM rate (`ceiling_flops_per_s`) measured for the panel's cases
    (PEER records none: it has no GEMM to compare with); the bandwidth is the highest copy bandwidth
    measured in them (one per worker process, so cases of one run differ slightly)."""
    roof = column(g, "ceiling_flops_per_s")
    bandwidth = column(g, "copy_bandwidth_bytes_per_s")
    return (float(roof[roof > 0].max()) if (roof > 0).any() else math.nan,
            float(bandwidth[bandwidth > 0].max()) if (bandwidth > 0).any() else math.nan)


def _series(row) -> str:
    params = row["case_params"] or {}
    if "baseline" in params:
        return mathtext_escaped(f"dense FFN ({params['baseline']})")
    if "preset" in params:
        return mathtext_escaped(str(params["preset"]))
    variant = str(row.get("spec.variant") or "?")
    if variant == "peer":  # product keys and brute force are two algorithms: two colours
        return mathtext_escaped(f"peer ({row.get('spec.peer_retrieval') or '?'})")
    return mathtext_escaped(variant)


def _point_label(params: dict) -> str:
    """The case's axes other than those the colour, marker and panel already say, in short names."""
    shown = {k: v for k, v in params.items() if k not in ("dtype", "mode", "tokens", "variant", "backend",
                                                           "peer_retrieval", "baseline")}
    return mathtext_escaped(", ".join(f"{SHORT_NAMES.get(k, k)}={v}" for k, v in sorted(shown.items())))


def roofline(df: pd.DataFrame) -> Plot | None:
    """Achieved FLOP/s against arithmetic intensity (analytic FLOPs / analytic bytes) on log-log
    axes, one panel per run and dtype, under min(roof, bandwidth x intensity) of that panel."""
    d, left_out = roofline_cases(df)
    if d.empty:
        return None
    d["series"] = [_series(r) for _, r in d.iterrows()]
    d["backend"] = text_column(d, "spec.backend").where(~d["series"].str.startswith("peer"), "PEER gather")
    d["point label"] = [_point_label(p) for p in d["case_params"]]
    d["GFLOP/s"] = d["achieved"] / 1e9
    d["panel"] = [mathtext_escaped(f"{r}, {t}") for r, t in zip(d["run"], text_column(d, "spec.dtype"), strict=True)]
    panels = list(dict.fromkeys(d["panel"]))
    colors = dict(zip(dict.fromkeys(d["series"]), sns.color_palette(n_colors=d["series"].nunique()), strict=True))
    markers = dict(zip(dict.fromkeys(d["backend"]), MARKERS * len(MARKERS), strict=False))
    ncols = min(len(panels), 2)
    nrows = math.ceil(len(panels) / ncols)
    fig = new_figure(5.6 * ncols + 0.6, 4.4 * nrows + 1.6)
    axes = new_axes(fig, nrows, ncols, squeeze=False).ravel()
    for ax, panel in zip(axes, panels, strict=False):
        _draw_panel(ax, d[d["panel"] == panel], panel, colors, markers)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    _legend(fig, colors, markers)
    notes = [f"left out: {n} {why}" for why, n in left_out.items()]
    fig.suptitle("Roofline: achieved FLOP/s against arithmetic intensity" + ("\n" + "; ".join(notes) if notes else ""),
                 fontsize=10)
    return Plot(fig, d, alt=_alt(d, panels, left_out))


def _draw_panel(ax, g: pd.DataFrame, title: str, colors: dict, markers: dict) -> None:
    roof, bandwidth = panel_ceilings(g)
    lo, hi = g["intensity"].min() / 3, g["intensity"].max() * 3
    if roof > 0 and bandwidth > 0:  # keep the ridge point (roof / bandwidth) in view
        lo, hi = min(lo, roof / bandwidth / 3), max(hi, roof / bandwidth * 3)
    x = np.geomspace(lo, hi, 64)
    if bandwidth > 0:
        under = x if not roof > 0 else x[bandwidth * x <= roof]
        if roof > 0:
            under = np.append(under, roof / bandwidth)
        ax.plot(under, bandwidth * under / 1e9, color="0.25", ls="--", lw=1.2, gid="bandwidth")
    if roof > 0:
        over = x if not bandwidth > 0 else np.insert(x[bandwidth * x > roof], 0, roof / bandwidth)
        ax.plot(over, np.full(len(over), roof / 1e9), color="0.25", ls="-", lw=1.5, gid="roof")
    for (series, backend), points in g.groupby(["series", "backend"], sort=False):
        ax.plot(points["intensity"], points["GFLOP/s"], ls="none", marker=markers[backend], ms=7,
                color=colors[series], alpha=0.85, markeredgecolor="white", gid="cases")
    if len(g) <= MAX_POINT_LABELS:  # few points: name each, so a reader can tell G=4 from G=8
        for _, p in g.iterrows():
            ax.annotate(p["point label"], (p["intensity"], p["GFLOP/s"]), xytext=(4, 3),
                        textcoords="offset points", fontsize=6, color="0.3")
    values = [*g["GFLOP/s"], *([roof / 1e9] if roof > 0 else [])]
    missing = [name for name, value in (("FLOP roof", roof), ("copy bandwidth", bandwidth)) if not value > 0]
    if missing:  # say so on the panel, rather than leave a reader looking for a line
        title += "\nno " + " or ".join(missing) + " measured" + (" (PEER has no GEMM)" if "FLOP roof" in missing
                                                                 and g["series"].str.startswith("peer").all() else "")
    ax.set(xscale="log", yscale="log", xlabel="arithmetic intensity, FLOP/byte (analytic, log)",
           ylabel="achieved GFLOP/s (analytic FLOPs / median latency, log)", title=title,
           xlim=(lo, hi), ylim=(min(values) / 2, max(values) * 2))
    log_ticks(ax.xaxis, x)
    log_ticks(ax.yaxis, [min(values) / 2, max(values) * 2])
    ax.title.set_fontsize(9)


def _legend(fig, colors: dict, markers: dict) -> None:
    from matplotlib.lines import Line2D
    handles = [Line2D([], [], color="0.25", ls="-", lw=1.5,
                      label="roof: highest dense-GEMM rate measured in the panel"),
               Line2D([], [], color="0.25", ls="--", lw=1.2, label="copy bandwidth x intensity (same run)")]
    handles += [Line2D([], [], ls="none", marker="o", ms=7, color=c, label=s) for s, c in colors.items()]
    handles += [Line2D([], [], ls="none", marker=m, ms=7, color="0.4", label=f"backend {b}")
                for b, m in markers.items()]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=7, frameon=False)


def _alt(d: pd.DataFrame, panels: list[str], left_out: dict[str, int]) -> str:
    series = list(dict.fromkeys(d["series"]))
    text = (f"Roofline: achieved FLOP/s against arithmetic intensity (analytic FLOPs per analytic byte), log-log, "
            f"{len(d)} forward cases in {len(panels)} panel{'s' if len(panels) > 1 else ''} "
            f"({'; '.join(panels)}), coloured by variant ({', '.join(series)}), each panel under its own "
            "measured dense-GEMM roof and copy-bandwidth line where measured.")
    if left_out:
        text += " Left out: " + "; ".join(f"{n} {why}" for why, n in left_out.items()) + "."
    return text.replace("\\$", "$")  # alt text is HTML, not matplotlib: "$" needs no escape there
