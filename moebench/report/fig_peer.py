"""PEER latency against N on log axes, product keys against brute force, each configuration beside its
own bandwidth floor."""

from __future__ import annotations

import pandas as pd
import seaborn as sns

from moebench.report.data import column
from moebench.report.figure_base import (
    Plot,
    finished_rows,
    has_several_runs,
    log_ticks,
    mathtext_escaped,
    new_axes,
    new_figure,
    text_column,
)

RUN_MARKERS = ("o", "s", "^", "D", "v", "P", "X")
FLOOR_LABEL = "bandwidth floor: expert rows read / copy bandwidth"


def peer(df: pd.DataFrame) -> Plot | None:
    """PEER median latency against the number of experts N on log-log axes, one line per
    configuration (retrieval, heads H, top-k k, width D), each with its own bandwidth floor: the expert
    rows its steps must read (T*H*k*2*D weights), at copy bandwidth. The floor depends on the
    configuration, not on N, so a floor is never shared between configurations.

    Configurations measured at two or more N are drawn as lines in the left panel ("N sweep");
    those measured at one N (the H, k, D variations) as rows in the right panel, beside the sweep's
    points at that N, each row's floor a marker on the same row."""
    d = finished_rows(df)
    if "spec.variant" not in d:
        return None
    d = d[(d["spec.variant"] == "peer") & (column(d, "latency_s") > 0)].copy()
    if d.empty:
        return None
    d["N experts"] = column(d, "spec.peer_experts")
    d["latency (s)"] = column(d, "latency_s")
    d["floor (s)"] = column(d, "floor_s").fillna(column(d, "bandwidth_floor_s"))
    d["shape"] = _configurations(d, with_run=False)
    d["configuration"] = _configurations(d, with_run=has_several_runs(d))
    n_values = d.groupby("configuration")["N experts"].nunique()
    sweeps = [c for c in dict.fromkeys(d["configuration"]) if n_values[c] > 1]
    single = [c for c in dict.fromkeys(d["configuration"]) if n_values[c] == 1]
    # the colour names the configuration, the marker the run: one run's configuration keeps its colour in another
    shapes = list(dict.fromkeys(d["shape"]))
    palette = sns.color_palette("tab10" if len(shapes) <= 10 else "husl", n_colors=len(shapes))
    colors = {c: palette[shapes.index(s)] for c, s in zip(d["configuration"], d["shape"], strict=True)}
    markers = dict(zip(dict.fromkeys(d["run"]), RUN_MARKERS * len(RUN_MARKERS), strict=False))
    d["marker"] = d["run"].map(markers)
    rows = _single_n_rows(d, sweeps, single)
    panels = [p for p in ("sweep", "single") if (p == "sweep" and sweeps) or (p == "single" and single)]
    widths = [1.5 if p == "sweep" else 1.0 for p in panels]
    fig = new_figure(6.5 + 6 * (len(panels) - 1), 4.2 + (0.22 * len(rows) if single else 0))
    axes = new_axes(fig, 1, len(panels), squeeze=False, gridspec_kw={"width_ratios": widths})[0]
    for ax, panel in zip(axes, panels, strict=True):
        if panel == "sweep":
            _draw_sweeps(ax, d[d["configuration"].isin(sweeps)], sweeps, colors)
        else:
            _draw_single_n(ax, rows, colors)
    fig.suptitle("PEER: product-key retrieval vs brute force, each against its own bandwidth floor")
    return Plot(fig, d, alt=_alt(d, sweeps, single, rows))


def _configurations(d: pd.DataFrame, with_run: bool) -> list[str]:
    """What sets a PEER step's work besides N: retrieval, heads, top-k, width, and the run, dtype and
    token count where these differ between the cases drawn."""
    parts = [text_column(d, "spec.peer_retrieval"),
             "H=" + text_column(d, "spec.peer_heads"), "k=" + text_column(d, "spec.peer_k"),
             "D=" + text_column(d, "spec.d_model")]
    for col, name in (("spec.dtype", ""), ("workload.tokens", "T="), ("workload.mode", "")):
        if col in d and d[col].nunique() > 1:
            parts.append(name + text_column(d, col))
    if with_run:
        parts.insert(0, d["run"].astype(str) + ":")
    return [mathtext_escaped(", ".join(p).replace(":,", ":")) for p in zip(*parts, strict=True)]


def _draw_sweeps(ax, d: pd.DataFrame, sweeps: list[str], colors: dict) -> None:
    """One solid line per configuration through its latencies, one dashed line in the same colour
    through its own floors."""
    for config in sweeps:
        g = d[d["configuration"] == config].sort_values("N experts")
        ax.plot(g["N experts"], g["latency (s)"], color=colors[config], marker=g["marker"].iloc[0], ms=6, label=config,
                gid="latency")
        floor = g.dropna(subset=["floor (s)"])
        if not floor.empty:
            ax.plot(floor["N experts"], floor["floor (s)"], color=colors[config], ls="--", lw=1.1, marker="v",
                    ms=5, alpha=0.8, gid=f"floor: {config}")
    ax.set(xscale="log", yscale="log", xlabel="number of experts N (log)",
           ylabel="median latency per step, s (log)", title="N sweep (solid: latency; dashed: its floor)")
    log_ticks(ax.xaxis, d["N experts"])
    values = pd.concat([d["latency (s)"], d["floor (s)"]]).dropna()
    ax.set_ylim(values.min() / 1.5, values.max() * 4)  # headroom above the lines for the legend
    log_ticks(ax.yaxis, values)
    handles, labels = ax.get_legend_handles_labels()
    from matplotlib.lines import Line2D
    handles.append(Line2D([], [], color="0.3", ls="--", marker="v", ms=5, label=FLOOR_LABEL))
    ax.legend(handles=handles, fontsize=7, loc="upper left", frameon=False)


def _single_n_rows(d: pd.DataFrame, sweeps: list[str], single: list[str]) -> pd.DataFrame:
    """The one-N configurations, and the sweep's points at those N for comparison, one row each."""
    if not single:
        return d.iloc[0:0]
    at = set(d.loc[d["configuration"].isin(single), "N experts"])
    rows = d[d["configuration"].isin(single) | (d["configuration"].isin(sweeps) & d["N experts"].isin(at))].copy()
    rows["row"] = [f"{c}, N={int(n)}" for c, n in zip(rows["configuration"], rows["N experts"], strict=True)]
    return rows.sort_values(["N experts", "latency (s)"])


def _draw_single_n(ax, rows: pd.DataFrame, colors: dict) -> None:
    """A latency dot and a floor marker per row, on one log time axis."""
    ys = range(len(rows))
    for y, (_, r) in zip(ys, rows.iterrows(), strict=True):
        color = colors[r["configuration"]]
        ax.plot([r["latency (s)"]], [y], ls="none", marker=r["marker"], ms=7, color=color, gid="latency")
        if pd.notna(r["floor (s)"]):
            ax.plot([r["floor (s)"]], [y], ls="none", marker="|", ms=14, mew=2.2, color=color,
                    gid=f"floor: {r['configuration']}")
            ax.plot([r["floor (s)"], r["latency (s)"]], [y, y], color=color, lw=0.8, alpha=0.5)
    ax.set_yticks(list(ys), list(rows["row"]), fontsize=7)
    ax.invert_yaxis()
    ax.set(xscale="log", xlabel="median latency (dot), its floor (bar); s, log", title="one N each")
    log_ticks(ax.xaxis, [*rows["latency (s)"], *rows["floor (s)"]])


def _alt(d: pd.DataFrame, sweeps: list[str], single: list[str], rows: pd.DataFrame) -> str:
    parts = []
    if sweeps:
        parts.append(f"median latency against N (log-log) for {len(sweeps)} configuration"
                     f"{'s' if len(sweeps) > 1 else ''} ({'; '.join(sweeps)}), each with its own bandwidth floor "
                     "as a dashed line in its colour")
    if single:
        ns = ", ".join(str(int(n)) for n in sorted(set(rows["N experts"])))
        parts.append(f"median latency of {len(rows)} configurations at N = {ns}, each against its own floor")
    text = "PEER: " + "; and ".join(parts) + f". {len(d)} cases."
    return text.replace("\\$", "$")  # alt text is HTML, not matplotlib: "$" needs no escape there
