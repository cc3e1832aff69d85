"""Memory: measured activation peak against the analytic upper bound, with the weights apart."""

from __future__ import annotations

import pandas as pd
import seaborn as sns

from moebench.report.data import column
from moebench.report.figure_base import (
    PAGE_WIDTH_IN,
    Plot,
    case_label,
    finished_rows,
    log_ticks,
    mathtext_escaped,
    new_axes,
    new_figure,
    spans_decades,
    text_column,
)

# What the figure draws, in legend order. Traffic (predicted_bytes_moved, predicted_dispatch_bytes) is
# bytes moved per step, not bytes held at once: it belongs to the roofline, not here.
MEMORY_QUANTITIES = {
    "peak_bytes": "measured: peak allocated during a step, above what was live (weights excluded)",
    "predicted_activation_bytes_upper": "analytic: upper bound on a forward's activations (forward cases only)",
    "weight_bytes": "measured: parameter bytes of the module (right panel)",
}
ACTIVATIONS = ("peak_bytes", "predicted_activation_bytes_upper")  # the left panel: like with like
BAR = 0.38


def memory(df: pd.DataFrame) -> Plot | None:
    """Per case, the measured peak above what was live beside the analytic upper bound on a forward's
    activations (accounting.layer_activation_bytes: every intermediate alive at once), and the weights
    in a panel of their own. The bound describes a forward: it is not drawn for training steps, whose
    peak also holds gradients and optimizer state."""
    d = finished_rows(df)
    d = d[column(d, "peak_bytes") > 0].copy()
    if d.empty:
        return None
    d["case"] = [f"{case_label(p, ('mode',))} [{mathtext_escaped(m)}]"
                 for p, m in zip(d["case_params"], text_column(d, "workload.mode"), strict=True)]
    forward = text_column(d, "workload.mode").isin(["forward", "?"])
    for key in MEMORY_QUANTITIES:
        d[f"{key} MiB"] = column(d, key) / 2**20
    d.loc[~forward, "predicted_activation_bytes_upper MiB"] = float("nan")
    order = list(dict.fromkeys(d["case"]))
    run_names = list(dict.fromkeys(d["run label"]))
    colors = dict(zip(MEMORY_QUANTITIES, sns.color_palette("Paired", 4)[1:], strict=False))
    # two runs fit the page width (PAGE_WIDTH_IN); three or more are wider and the browser scales them down
    fig = new_figure(10 if len(run_names) == 1 else max(PAGE_WIDTH_IN, 4.6 * len(run_names)), 2.4 + 0.42 * len(order))
    axes = new_axes(fig, 1, 2 * len(run_names), squeeze=False, sharey=True,
                    gridspec_kw={"width_ratios": [2.2, 1] * len(run_names)})[0]
    act_log = spans_decades(pd.concat([d[f"{k} MiB"] for k in ACTIVATIONS]))
    weight_log = spans_decades(d["weight_bytes MiB"])
    for i, run in enumerate(run_names):
        rows = d[d["run label"] == run].drop_duplicates("case", keep="last").set_index("case").reindex(order)
        suffix = f"\n{run}" if len(run_names) > 1 else ""
        _bars(axes[2 * i], rows, ACTIVATIONS, colors, act_log, "activations: peak vs analytic bound" + suffix)
        _bars(axes[2 * i + 1], rows, ("weight_bytes",), colors, weight_log, "weights" + suffix)
        _mark_missing_bounds(axes[2 * i], rows)
    axes[0].set_yticks(range(len(order)), order, fontsize=7)
    axes[0].invert_yaxis()
    from matplotlib.patches import Patch
    fig.legend(handles=[Patch(color=colors[k], label=v) for k, v in MEMORY_QUANTITIES.items()],
               loc="outside lower center", ncols=1, fontsize=7, frameon=False)
    fig.suptitle("Memory: measured peak against the analytic activation bound; weights apart")
    return Plot(fig, d, alt=_alt(d, order, run_names))


def _bars(ax, rows: pd.DataFrame, keys, colors: dict, log: bool, title: str) -> None:
    """Horizontal bars, one per quantity per case row; a missing or zero value draws no bar."""
    offsets = [0.0] if len(keys) == 1 else [-BAR / 2, BAR / 2]
    for key, offset in zip(keys, offsets, strict=True):
        values = rows[f"{key} MiB"]
        present = values > 0
        ys = [y + offset for y, ok in enumerate(present) if ok]
        ax.barh(ys, values[present].to_numpy(), height=BAR if len(keys) > 1 else 2 * BAR, color=colors[key],
                gid=key)
    ax.set(xscale="log" if log else "linear", xlabel="MiB (log)" if log else "MiB", title=title)
    ax.title.set_fontsize(9)
    if log:
        log_ticks(ax.xaxis, [v for k in keys for v in rows[f"{k} MiB"] if v > 0])


def _mark_missing_bounds(ax, rows: pd.DataFrame) -> None:
    """Say why a row has no analytic bar, instead of leaving a gap a reader might read as zero."""
    for y, (mode, bound, peak) in enumerate(zip(text_column(rows, "workload.mode"),
                                                rows["predicted_activation_bytes_upper MiB"],
                                                rows["peak_bytes MiB"], strict=True)):
        if pd.notna(peak) and not bound > 0:
            why = f"no bound: {mode}" if mode not in ("forward", "?") else "no bound recorded"
            # in the bound's slot, from the panel's left edge: visible whatever the scale
            note = ax.annotate(why, (0.01, y + BAR / 2), xycoords=("axes fraction", "data"), va="center",
                               fontsize=6, color="0.35", clip_on=True)
            note.set_in_layout(False)  # a note never squeezes the panels


def _alt(d: pd.DataFrame, order: list[str], run_names: list[str]) -> str:
    bounded = int((d["predicted_activation_bytes_upper MiB"] > 0).sum())
    runs = f" for {len(run_names)} runs side by side" if len(run_names) > 1 else ""
    return (f"Memory of {len(order)} cases{runs}: left, the measured peak above what was live against the analytic "
            f"upper bound on a forward's activations ({bounded} of {len(d)} cases have one; training steps do "
            "not); right, the measured weight bytes. Horizontal bars in MiB, one row per case.")
