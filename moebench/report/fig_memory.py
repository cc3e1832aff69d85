"""Memory measured (peak, weights) beside the analytic byte counts."""

from __future__ import annotations

import pandas as pd
import seaborn as sns

from moebench.report.data import column
from moebench.report.figure_base import (
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

MEMORY_QUANTITIES = {
    "peak_bytes": "measured: peak allocated during a step, above what was live (weights excluded)",
    "weight_bytes": "measured: parameter bytes of the module",
    "predicted_dispatch_bytes": "analytic: dispatch buffers (moebench.accounting)",
    "predicted_bytes_moved": "analytic: bytes moved per step (traffic, not residency)",
}


def memory(df: pd.DataFrame) -> Plot | None:
    """Measured memory (peak above live, weights) beside the analytic byte counts, per case."""
    d = finished_rows(df)
    d = d[column(d, "peak_bytes") > 0].copy()
    if d.empty:
        return None
    d["case"] = [f"{case_label(p)} [{mathtext_escaped(m)}]"
                 for p, m in zip(d["case_params"], text_column(d, "workload.mode"), strict=True)]
    long = d.melt(id_vars=["run label", "case"], value_vars=[k for k in MEMORY_QUANTITIES if k in d],
                  var_name="quantity", value_name="bytes")
    long["MiB"] = pd.to_numeric(long["bytes"], errors="coerce") / 2**20
    long = long[long["MiB"] > 0]
    long["quantity"] = long["quantity"].map(MEMORY_QUANTITIES)
    order = list(dict.fromkeys(long["case"]))
    hue_order = [q for q in MEMORY_QUANTITIES.values() if q in set(long["quantity"])]
    run_names = list(dict.fromkeys(long["run label"]))
    log = spans_decades(long["MiB"])
    fig = new_figure(11 if len(run_names) == 1 else 7 + 4 * len(run_names), 2.0 + 0.55 * len(order))
    axes = new_axes(fig, 1, len(run_names), squeeze=False, sharex=True, sharey=True)[0]
    for ax, run in zip(axes, run_names, strict=True):  # one panel per run, side by side, same cases on each row
        sns.barplot(long[long["run label"] == run], x="MiB", y="case", hue="quantity", order=order, hue_order=hue_order,
                    ax=ax, errorbar=None, palette="Paired")
        ax.set(xscale="log" if log else "linear", ylabel="", xlabel="MiB (log)" if log else "MiB",
               title=run if len(run_names) > 1 else "")
        if log:
            log_ticks(ax.xaxis, long["MiB"])
        handles, labels = ax.get_legend_handles_labels()
        ax.get_legend().remove()
    fig.suptitle("Memory: measured against analytic")
    fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize=7, frameon=False)
    return Plot(fig, d)


# --- which figures a suite kind shows --------------------------------------------------------------
