"""One function per figure. Each takes the cases DataFrame (report.data.load_runs) and returns a
Plot (the figure and the rows it drew, for the conditions line) or None when the data has nothing
for that figure. Figures are built on matplotlib's Agg canvas directly: no GUI backend, no pyplot
global state, so a report can be made in any process.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogFormatterSciNotation, LogLocator, NullFormatter

from moebench.accounting import krajewski_router_share
from moebench.report.data import column, ok_cases
from moebench.routing.capacity import expected_drop_fraction_uniform

ROUTING_PHASES = ("router", "dispatch", "combine")
COMPUTE_PHASES = ("experts", "shared")


@dataclass
class Plot:
    figure: Figure
    data: pd.DataFrame  # the rows drawn: the conditions line is rendered from these


def _figure(width: float, height: float) -> Figure:
    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _axes(fig: Figure, *args, **kwargs):
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.8):
        return fig.subplots(*args, **kwargs)


def case_label(params: dict, drop: tuple[str, ...] = ()) -> str:
    """A short name from a case's params: variant/backend first, then the other axes as k=v."""
    params = {k: v for k, v in params.items() if k not in drop}
    if "baseline" in params:
        head = f"dense FFN ({params.pop('baseline')})"
    elif "preset" in params:
        head = str(params.pop("preset"))
    else:
        head = str(params.pop("variant", "") or "")
    if "backend" in params:
        head = f"{head}/{params.pop('backend')}" if head else str(params.pop("backend"))
    rest = [f"{k}={v}" for k, v in sorted(params.items())]
    return _plain(", ".join(x for x in [head, *rest] if x) or "base")


def _plain(text) -> str:
    """Text from results, escaped for matplotlib: "$...$" in a label is text, not a formula."""
    return str(text).replace("$", r"\$")


def _ok(df: pd.DataFrame) -> pd.DataFrame:
    """The finished cases, with "run label": the run name as matplotlib should print it."""
    d = ok_cases(df).copy()
    d["run label"] = [_plain(r) for r in d["run"]]
    return d


def _text(df: pd.DataFrame, col: str) -> pd.Series:
    """df[col] as text, "?" where a record lacks it."""
    if col not in df:
        return pd.Series("?", index=df.index)
    return df[col].astype(object).where(df[col].notna(), "?").astype(str)


def run_colors(df: pd.DataFrame) -> dict:
    """run label -> colour, in order of first appearance."""
    runs = list(dict.fromkeys(df["run label"]))
    return dict(zip(runs, sns.color_palette(n_colors=max(len(runs), 1)), strict=True))


def _multi_run(df: pd.DataFrame) -> bool:
    return df["run"].nunique() > 1


def _lines(data: pd.DataFrame, x: str, y: str, hue: str, runs: list[str], ax, **kwargs) -> None:
    """Lines through the points of each hue, every point marked (a lone point shows too); the run
    is the marker style when several runs are compared (style_order: the same marker in every panel)."""
    style = {"style": "run label", "style_order": runs, "markers": True} if len(runs) > 1 else {"marker": "o"}
    sns.lineplot(data, x=x, y=y, hue=hue, dashes=False, ax=ax, errorbar=None, markersize=7, **style, **kwargs)


def _log_ticks(axis, values) -> None:
    """Labels on a log axis: 1-2-5 steps when the values span under two decades, decades beyond
    (matplotlib's own minor labels overlap over about two decades)."""
    v = pd.to_numeric(pd.Series(list(values)), errors="coerce")
    v = v[v > 0]
    subs = (1.0,) if v.empty or v.max() / v.min() >= 100 else (1.0, 2.0, 5.0)
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    # decades as 10^k; 1-2-5 steps as plain numbers (200, 500, 1000)
    axis.set_major_formatter(LogFormatterSciNotation() if subs == (1.0,) else FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _spans_decades(values: pd.Series, decades: float = 1.5) -> bool:
    v = values[values > 0].dropna()
    return len(v) > 1 and math.log10(v.max() / v.min()) >= decades


# --- throughput -----------------------------------------------------------------------------------

def throughput(df: pd.DataFrame) -> Plot | None:
    """Tokens/s per case, and the expert FLOP rate against the same run's measured dense-GEMM
    ceiling (frac_of_ceiling = expert FLOP rate / ceiling, so rate = frac * ceiling)."""
    d = _ok(df)
    d = d[column(d, "tokens_per_s") > 0].copy()
    if d.empty:
        return None
    d["group"] = [_plain(f"{m}, {t}, T={n}") for m, t, n in
                  zip(_text(d, "workload.mode"), _text(d, "spec.dtype"), _text(d, "workload.tokens"), strict=True)]
    d["case"] = [case_label(p, ("mode", "dtype", "tokens")) for p in d["case_params"]]
    d["tokens/s"] = column(d, "tokens_per_s")
    d["expert GFLOP/s"] = column(d, "frac_of_ceiling") * column(d, "ceiling_flops_per_s") / 1e9
    d["ceiling GFLOP/s"] = column(d, "ceiling_flops_per_s") / 1e9
    groups = list(dict.fromkeys(d["group"]))
    sizes = [d.loc[d["group"] == g, "case"].nunique() for g in groups]
    multi = _multi_run(d)
    per_bar = 0.28 * (d["run"].nunique() if multi else 1)
    fig = _figure(11, 1.0 + sum(0.6 + per_bar * s for s in sizes))
    axes = _axes(fig, len(groups), 2, squeeze=False, sharex="col",
                 gridspec_kw={"height_ratios": [0.6 + per_bar * s for s in sizes]})
    log_tps = _spans_decades(d["tokens/s"])
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
            _log_ticks(left.xaxis, d["tokens/s"])
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

def routing_tax(df: pd.DataFrame) -> Plot | None:
    """Stacked per-phase shares of the phase sum over G, with the analytic routing FLOP share of the
    layer and Krajewski et al.'s routing share of a whole block overlaid; the crossover is the first
    G where routing time (router + dispatch + combine) exceeds expert time."""
    d = _ok(df)
    d = d[[isinstance(p, dict) and "granularity" in p for p in d["case_params"]]].copy()
    d = d[column(d, "phase_experts_s") > 0]
    if d.empty:
        return None
    d["G"] = [int(p["granularity"]) for p in d["case_params"]]
    multi = _multi_run(d)
    d["panel"] = [f"{r} · {_plain(t)}" if multi else _plain(t)
                  for r, t in zip(d["run label"], _text(d, "spec.dtype"), strict=True)]
    panels = list(dict.fromkeys(d["panel"]))
    fig = _figure(max(7.0, 5.2 * len(panels)), 4.6)
    axes = np.atleast_1d(_axes(fig, 1, len(panels), squeeze=False)[0])
    phases = [p for p in (*ROUTING_PHASES, *COMPUTE_PHASES) if column(d, f"phase_{p}_s").notna().any()]
    colors = dict(zip(phases, sns.color_palette("Set2", len(phases)), strict=True))
    for ax, panel in zip(axes, panels, strict=True):
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
        cross = routing_crossover(times.index, routing_s, times["experts"])
        if cross is not None:
            at = list(times.index).index(cross)
            note = " (smallest G measured)" if at == 0 else ""
            ax.axvline(at - 0.5, color="crimson", ls=":", lw=1.5)
            ax.text(at - 0.45, 0.97, f"routing time > expert time\nfrom G={cross}{note}", color="crimson",
                    va="top", fontsize=7, bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})
        ax.set(title=panel, xlabel="granularity G (E·G experts of width F/G, top K·G)",
               ylabel="share of summed phase time", ylim=(0, 1.02))
        ax.tick_params(axis="x", rotation=0)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=7, frameon=False)
    fig.suptitle("Routing tax over granularity: measured phase shares (bars) vs analytic shares (lines)")
    return Plot(fig, d)


def routing_crossover(G, routing_s, experts_s):
    """The first G (ascending) where routing time (router + dispatch + combine) exceeds expert time;
    None when it never does."""
    for g, r, e in sorted(zip(G, routing_s, experts_s, strict=True)):
        if r > e:
            return g
    return None


# --- capacity and drops ---------------------------------------------------------------------------

def _distribution(row) -> str:
    name = row.get("workload.routing") or "router"
    if name == "router":
        return "layer's own router (not forced)"
    extra = (row.get("case_params") or {}).get("routing_params") or {}
    return _plain(" ".join([str(name), *(f"{k}={v}" for k, v in sorted(extra.items()))]))


def uniform_reference(T: int, E: int, K: int, cfs, min_capacity: int = 0) -> list[float]:
    """The binomial expectation of the dropped fraction under uniform routing at each CF."""
    return [expected_drop_fraction_uniform(T, E, K, float(cf), min_capacity) for cf in cfs]


def drops(df: pd.DataFrame) -> Plot | None:
    """Measured drop rate against capacity factor per routing distribution, per (E, K, policy),
    beside the binomial expectation for uniform routing."""
    d = _ok(df)
    d = d[column(d, "spec.capacity_factor").notna() & column(d, "drop_rate").notna()].copy()
    if "spec.variant" in d:
        d = d[d["spec.variant"] != "expert_choice"]
    if d.empty:
        return None
    d["capacity factor"] = column(d, "spec.capacity_factor")
    d["drop rate"] = column(d, "drop_rate")
    d["routing"] = [_distribution(r) for _, r in d.iterrows()]
    d["T"] = column(d, "workload.tokens").fillna(0).astype(int) * column(d, "workload.batch").fillna(1).astype(int)
    d["panel"] = [_plain(f"{v}, E={e}, K={k}\n{p} policy, T={t}") for v, e, k, p, t in
                  zip(_text(d, "spec.variant"), d["spec.n_experts"], d["spec.top_k"], _text(d, "spec.drop_policy"),
                      d["T"], strict=True)]
    panels = sorted(dict.fromkeys(d["panel"]))
    ncols = min(len(panels), 4)
    nrows = math.ceil(len(panels) / ncols)
    fig = _figure(3.6 * ncols + 1.8, 3.0 * nrows + 0.6)
    axes = _axes(fig, nrows, ncols, squeeze=False, sharey=True).ravel()
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
        _lines(g, "capacity factor", "drop rate", "routing", list(run_colors(d)), ax, hue_order=hue_order,
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

MAX_HEATMAP_ROWS = 40


def expert_load(df: pd.DataFrame) -> Plot | None:
    """Kept load per expert divided by the mean load, one heatmap row per case, one panel per E."""
    d = _ok(df)
    d = d[[isinstance(v, list) and len(v) > 1 and sum(v) > 0 for v in d["loads"]]].copy()
    if d.empty:
        return None
    d["E"] = [len(v) for v in d["loads"]]
    sizes = sorted(d["E"].unique())
    heights = [min(int((d["E"] == e).sum()), MAX_HEATMAP_ROWS) for e in sizes]
    fig = _figure(11, 1.2 + sum(0.9 + 0.24 * h for h in heights))
    axes = _axes(fig, len(sizes), 1, squeeze=False, gridspec_kw={"height_ratios": [0.9 + 0.24 * h for h in heights]})
    vmax = max(2.0, max(max(v) / (sum(v) / len(v)) for v in d["loads"]))
    for ax, E in zip(axes[:, 0], sizes, strict=True):
        g = d[d["E"] == E].head(MAX_HEATMAP_ROWS)
        grid = pd.DataFrame([np.asarray(v, dtype=float) / np.mean(v) for v in g["loads"]],
                            index=_row_labels(g))
        with warnings.catch_warnings():
            # heatmap draws once to test its tick labels for overlap, before they are laid out
            warnings.filterwarnings("ignore", "constrained_layout not applied")
            warnings.filterwarnings("ignore", "The set_bad function", PendingDeprecationWarning)
            # two slopes: 0 (dead) is full blue and the busiest expert full red, whatever vmax is
            sns.heatmap(grid, ax=ax, cmap="vlag", norm=TwoSlopeNorm(vmin=0.0, vcenter=1.0, vmax=vmax),
                        xticklabels=int(max(1, E // 16)), yticklabels=True, cbar=False)
        shown = "" if (d["E"] == E).sum() <= MAX_HEATMAP_ROWS else f" (first {MAX_HEATMAP_ROWS} cases)"
        ax.set(title=f"E = {E} experts{shown}", xlabel="expert index", ylabel="")
        ax.tick_params(axis="y", labelsize=7, labelrotation=0)
    # one colour scale for every panel, so the same colour means the same imbalance everywhere
    fig.colorbar(axes[0, 0].collections[0], ax=axes[:, 0].tolist(), label="kept load / mean load",
                 shrink=min(1.0, 4.0 / fig.get_figheight()), aspect=15)
    fig.suptitle("Expert load after capacity (1 = perfectly balanced, 0 = dead expert)")
    return Plot(fig, d)


def _row_labels(g: pd.DataFrame) -> list[str]:
    """Case labels without the axes every row of the panel shares (they go unsaid), run-prefixed
    when several runs are shown; cut to 70 characters."""
    params = list(g["case_params"])
    shared = {k for k in set().union(*params) if all(k in p and p[k] == params[0][k] for p in params)}
    if len(params) == 1:
        shared = set()
    labels = [case_label({k: v for k, v in p.items() if k not in shared}) for p in params]
    if g["run"].nunique() > 1:
        labels = [f"{r}: {label}" for r, label in zip(g["run label"], labels, strict=True)]
    return [_clip(label, 70) for label in labels]


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1].rstrip("\\") + "…"


# --- PEER -----------------------------------------------------------------------------------------

def peer(df: pd.DataFrame) -> Plot | None:
    """PEER median latency against the number of experts N on log-log axes, product keys against
    brute force, with the bandwidth floor: the expert rows each step must read, at copy bandwidth."""
    d = _ok(df)
    if "spec.variant" not in d:
        return None
    d = d[(d["spec.variant"] == "peer") & (column(d, "latency_s") > 0)].copy()
    if d.empty:
        return None
    d["N experts"] = column(d, "spec.peer_experts")
    d["latency (s)"] = column(d, "latency_s")
    d["floor (s)"] = column(d, "floor_s").fillna(column(d, "bandwidth_floor_s"))
    d["retrieval"] = [_plain(f"{r}, heads={h}, k={k}, D={dm}") for r, h, k, dm in
                      zip(_text(d, "spec.peer_retrieval"), d["spec.peer_heads"], d["spec.peer_k"],
                          d["spec.d_model"], strict=True)]
    fig = _figure(8.5, 5)
    ax = _axes(fig)
    _lines(d, "N experts", "latency (s)", "retrieval", list(run_colors(d)), ax)
    floor = d.groupby("N experts")["floor (s)"].min().dropna()
    if not floor.empty:
        ax.plot(floor.index, floor.to_numpy(), color="0.2", ls="--", marker="v", ms=7,
                label="bandwidth floor: expert rows read / copy bandwidth")
    ax.set(xscale="log", yscale="log", xlabel="number of experts N (log)", ylabel="median latency per step, s (log)",
           title="PEER: product-key retrieval vs brute force")
    _log_ticks(ax.xaxis, d["N experts"])
    _log_ticks(ax.yaxis, [*d["latency (s)"], *d["floor (s)"]])
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return Plot(fig, d)


# --- memory ---------------------------------------------------------------------------------------

MEMORY_QUANTITIES = {
    "peak_bytes": "measured: peak allocated during a step, above what was live (weights excluded)",
    "weight_bytes": "measured: parameter bytes of the module",
    "predicted_dispatch_bytes": "analytic: dispatch buffers (moebench.accounting)",
    "predicted_bytes_moved": "analytic: bytes moved per step (traffic, not residency)",
}


def memory(df: pd.DataFrame) -> Plot | None:
    """Measured memory (peak above live, weights) beside the analytic byte counts, per case."""
    d = _ok(df)
    d = d[column(d, "peak_bytes") > 0].copy()
    if d.empty:
        return None
    d["case"] = [f"{case_label(p)} [{_plain(m)}]"
                 for p, m in zip(d["case_params"], _text(d, "workload.mode"), strict=True)]
    long = d.melt(id_vars=["run label", "case"], value_vars=[k for k in MEMORY_QUANTITIES if k in d],
                  var_name="quantity", value_name="bytes")
    long["MiB"] = pd.to_numeric(long["bytes"], errors="coerce") / 2**20
    long = long[long["MiB"] > 0]
    long["quantity"] = long["quantity"].map(MEMORY_QUANTITIES)
    order = list(dict.fromkeys(long["case"]))
    hue_order = [q for q in MEMORY_QUANTITIES.values() if q in set(long["quantity"])]
    run_names = list(dict.fromkeys(long["run label"]))
    log = _spans_decades(long["MiB"])
    fig = _figure(11 if len(run_names) == 1 else 7 + 4 * len(run_names), 2.0 + 0.55 * len(order))
    axes = _axes(fig, 1, len(run_names), squeeze=False, sharex=True, sharey=True)[0]
    for ax, run in zip(axes, run_names, strict=True):  # one panel per run, side by side, same cases on each row
        sns.barplot(long[long["run label"] == run], x="MiB", y="case", hue="quantity", order=order, hue_order=hue_order,
                    ax=ax, errorbar=None, palette="Paired")
        ax.set(xscale="log" if log else "linear", ylabel="", xlabel="MiB (log)" if log else "MiB",
               title=run if len(run_names) > 1 else "")
        if log:
            _log_ticks(ax.xaxis, long["MiB"])
        handles, labels = ax.get_legend_handles_labels()
        ax.get_legend().remove()
    fig.suptitle("Memory: measured against analytic")
    fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize=7, frameon=False)
    return Plot(fig, d)


# --- which figures a suite kind shows --------------------------------------------------------------

FIGURES = {  # name: (section title, function, caption under the figure)
    "throughput": ("Throughput", throughput,
                   "Left: tokens per second at the median latency. Right: the expert FLOP rate (analytic expert "
                   "FLOPs / median latency) against the ceiling measured in the same run: a dense GEMM over the "
                   "same T·K rows. PEER has no FLOP ceiling (it is memory-bound; see its figure)."),
    "routing_tax": ("Routing tax over granularity", routing_tax,
                    "Bars: each phase's median time as a share of the summed phase times (measured). Lines: the "
                    "analytic routing FLOP share of this layer, and Krajewski et al.'s routing share of a whole "
                    "transformer block (training FLOPs). The red line marks the first G where router + dispatch "
                    "+ combine time exceeds expert time."),
    "drops": ("Drops against capacity factor", drops,
              "Points: measured fraction of (token, expert) assignments not computed for capacity, per routing "
              "distribution. Dashed: the exact binomial expectation if every token picked its K experts "
              "uniformly at random."),
    "expert_load": ("Expert load", expert_load,
                    "Each row is one case: the number of assignments each expert computed (after capacity), "
                    "divided by the mean over experts."),
    "peer": ("PEER latency against N", peer,
             "Median latency per step against the number of experts, both axes logarithmic. Dashed: the time to "
             "read the expert rows a step retrieves once at the measured copy bandwidth (a lower bound)."),
    "memory": ("Memory", memory,
               "Measured bytes (peak allocated during a step above what was live before it; the module's weights) "
               "beside analytic byte counts. Bytes moved is traffic per step, not memory held at once."),
}
# "mixed" (quick) and unknown kinds get every figure their data supports.
FIGURES_BY_KIND = {
    "throughput": ("throughput",),
    "memory": ("memory",),
    "granularity": ("routing_tax", "throughput"),
    "capacity": ("drops", "expert_load"),
    "peer": ("peer", "memory"),
    "models": ("throughput", "expert_load", "memory"),
    "routers": ("throughput", "drops", "expert_load"),
    "lifelong": ("throughput", "memory"),
    "ci": ("throughput",),
}


def figures_for(kinds) -> list[str]:
    """The figure names the given suite kinds call for, in FIGURES order."""
    wanted: set[str] = set()
    for kind in kinds:
        wanted |= set(FIGURES_BY_KIND.get(kind, FIGURES))
    return [name for name in FIGURES if name in wanted]
