"""Expert-load heatmaps: each case's computed assignments per expert over the mean.

A large suite (the capacity suite holds over 200 cases) does not fit one readable row per case, and
cutting it to the first N would hide cases silently. So when a panel would hold more rows than
fit, cases that differ only in the axes least telling for load (capacity factor first, then drop
policy, ...) share a row: the mean of their load/mean vectors. The panel's title and the alt text
name the axes averaged over, and Plot.data keeps every case with the row it went into."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import FuncNorm

from moebench.report.figure_base import Plot, case_label, finished_rows, new_axes, new_figure

MAX_HEIGHT_IN = 36.0  # 2880 px at the report's 80 DPI
ROW_IN, PANEL_IN = 0.24, 0.9  # a heatmap row (its 7 pt label fits), and a panel's title and axis
MIN_PANEL_ROWS = 2
# averaged over first, in this order, when a panel has too many rows: the axes that change how
# many assignments are kept, not which experts the router favours. The drop policy comes first: it
# changes which assignments an expert keeps, never how many (min(routed, C) either way), so its rows
# are equal and averaging them loses nothing.
AVERAGE_FIRST = ("drop_policy", "capacity_factor", "expert_capacity_c", "min_capacity", "seed", "tokens", "batch")
ROW = "heatmap row"  # Plot.data column: the label of the row a case is drawn in


def expert_load(df: pd.DataFrame) -> Plot | None:
    """Kept load per expert divided by the mean load, one heatmap row per case (or per group of
    cases averaged, named in the panel title), one panel per E."""
    d = finished_rows(df)
    d = d[[_drawable(v) for v in d["loads"]]].copy()
    if d.empty:
        return None
    d["E"] = [len(v) for v in d["loads"]]
    sizes = sorted(d["E"].unique())
    rows_that_fit = (MAX_HEIGHT_IN - 1.2 - PANEL_IN * len(sizes)) / ROW_IN
    limit = max(MIN_PANEL_ROWS, int(rows_that_fit // len(sizes)))
    panels = {E: _panel(d[d["E"] == E], limit) for E in sizes}
    for E, p in panels.items():
        d.loc[d["E"] == E, ROW] = p.row_of_case
    heights = [PANEL_IN + ROW_IN * len(p.grid) for p in panels.values()]
    fig = new_figure(11, 1.2 + sum(heights))
    axes = new_axes(fig, len(sizes), 1, squeeze=False, gridspec_kw={"height_ratios": heights})
    vmax = max(2.0, max(max(v) / (sum(v) / len(v)) for v in d["loads"]))
    for ax, (E, p) in zip(axes[:, 0], panels.items(), strict=True):
        with warnings.catch_warnings():
            # heatmap draws once to test its tick labels for overlap, before they are laid out
            warnings.filterwarnings("ignore", "constrained_layout not applied")
            warnings.filterwarnings("ignore", "The set_bad function", PendingDeprecationWarning)
            sns.heatmap(p.grid, ax=ax, cmap="vlag", norm=load_norm(vmax),
                        xticklabels=int(max(1, E // 16)), yticklabels=True, cbar=False)
        ax.set(title=f"E = {E} experts: {p.title}", xlabel="expert index", ylabel="")
        ax.tick_params(axis="y", labelsize=7, labelrotation=0)
    # one colour scale for every panel, so the same colour means the same imbalance everywhere
    bar = fig.colorbar(axes[0, 0].collections[0], ax=axes[:, 0].tolist(), label="kept load / mean load",
                       shrink=min(1.0, 4.0 / fig.get_figheight()), aspect=15)
    bar.set_ticks(_bar_ticks(vmax), labels=[f"{t:g}" for t in _bar_ticks(vmax)])
    fig.suptitle("Expert load after capacity (1 = perfectly balanced, 0 = dead expert)")
    alt = (f"Heatmap of kept load / mean load (colour, 0 to {vmax:.1f}) against expert index (x) and case (rows), "
           "one panel per number of experts E. " + " ".join(f"E = {E}: {p.description}." for E, p in panels.items()))
    return Plot(fig, d, alt=alt)


def _drawable(loads) -> bool:
    """A load vector the heatmap can divide by its mean: over one expert, finite counts >= 0, not all 0."""
    if not isinstance(loads, list) or len(loads) < 2:
        return False
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= 0 for x in loads):
        return False
    return sum(loads) > 0


def load_norm(vmax: float) -> FuncNorm:
    """Colour of load/mean: 0 (dead) to 1 (balanced) linear onto the blue half, 1 to vmax
    logarithmic onto the red half. Linear above 1, one extreme case (a 30x hot expert) would wash
    out every 2x imbalance to near white."""
    log_top = np.log(vmax)

    def forward(x):
        x = np.asarray(x, dtype=float)
        return np.where(x <= 1, x / 2, 0.5 + 0.5 * np.log(np.maximum(x, 1)) / log_top)

    def inverse(y):
        y = np.asarray(y, dtype=float)
        return np.where(y <= 0.5, 2 * y, np.exp((np.maximum(y, 0.5) - 0.5) * 2 * log_top))

    return FuncNorm((forward, inverse), vmin=0.0, vmax=vmax)


def _bar_ticks(vmax: float) -> list[float]:
    """0, 0.5, 1, then doublings up to vmax: evenly spaced on the log half of load_norm."""
    ticks, t = [0.0, 0.5, 1.0], 2.0
    while t <= vmax:
        ticks.append(t)
        t *= 2
    return ticks


class _Panel:
    """One panel's heatmap: `grid` (row label -> load/mean per expert), the row each case went
    into, and what a row is: short for the panel title, with the values for the alt text."""

    def __init__(self, grid: pd.DataFrame, row_of_case: list[str], title: str, description: str):
        self.grid, self.row_of_case, self.title, self.description = grid, row_of_case, title, description


def _panel(g: pd.DataFrame, limit: int) -> _Panel:
    """One row per case when they fit in `limit`; otherwise average over as few axes as will do:
    one axis alone (in AVERAGE_FIRST order, then the axes with the most values), else the first two
    of that order together, and so on."""
    params = [dict(p) if isinstance(p, dict) else {} for p in g["case_params"]]
    runs = list(g["run label"]) if g["run"].nunique() > 1 else [""] * len(g)
    averaged = _axes_to_average(params, runs, limit)
    keys = [_key(p, r, averaged) for p, r in zip(params, runs, strict=True)]
    shown = [{k: v for k, v in p.items() if k not in averaged} for p in params]
    labels = dict(zip(keys, _row_labels(shown, runs), strict=True))  # the same key gets the same label
    normalized = [np.asarray(v, dtype=float) / np.mean(v) for v in g["loads"]]
    rows: dict[tuple, list] = {}
    for key, vec in zip(keys, normalized, strict=True):
        rows.setdefault(key, []).append(vec)
    counts = {key: len(vecs) for key, vecs in rows.items()}
    names = {key: labels[key] + (f" (mean of {counts[key]})" if counts[key] > 1 else "") for key in rows}
    grid = pd.DataFrame([np.mean(vecs, axis=0) for vecs in rows.values()], index=[names[k] for k in rows])
    cases = f"{len(g)} case{'s' if len(g) != 1 else ''}"
    if not averaged:
        return _Panel(grid, [names[k] for k in keys], cases, cases)
    rows_of = f"{cases} in {len(grid)} rows, each the mean over "
    title = rows_of + ", ".join(f"{a} ({_count(params, a)} values)" for a in averaged)
    description = rows_of + "the cases that differ only in " + ", ".join(_values(params, a) for a in averaged)
    return _Panel(grid, [names[k] for k in keys], title, description)


def _axes_to_average(params: list[dict], runs: list[str], limit: int) -> list[str]:
    def rows(averaged: list[str]) -> int:
        return len({_key(p, r, averaged) for p, r in zip(params, runs, strict=True)})

    order = _averaging_order(params)
    if rows([]) <= limit:
        return []
    for axis in order:
        if rows([axis]) <= limit:
            return [axis]
    for n in range(2, len(order) + 1):
        if rows(order[:n]) <= limit:
            return order[:n]
    return order


def _averaging_order(params: list[dict]) -> list[str]:
    """The axes that vary within the panel, AVERAGE_FIRST first, then the rest by most values."""
    varying = [k for k in dict.fromkeys(k for p in params for k in p)
               if len({repr(p.get(k)) for p in params}) > 1]
    first = [k for k in AVERAGE_FIRST if k in varying]
    rest = sorted((k for k in varying if k not in first), key=lambda k: -len({repr(p.get(k)) for p in params}))
    return first + rest


def _key(params: dict, run: str, averaged: list[str]) -> tuple:
    return (run, *sorted((k, repr(v)) for k, v in params.items() if k not in averaged))


def _count(params: list[dict], axis: str) -> int:
    return len({repr(p[axis]) for p in params if axis in p})


def _values(params: list[dict], axis: str) -> str:
    """'capacity_factor (0.5, 1.0, 2.0)': an axis and the values it takes in the panel."""
    distinct = {repr(p[axis]): p[axis] for p in params if axis in p}  # repr: a value may be unhashable
    values = sorted(distinct.values(), key=lambda v: (0, v, "") if isinstance(v, (int, float)) else (1, 0, repr(v)))
    shown = ", ".join(str(v) for v in values[:8]) + (", …" if len(values) > 8 else "")
    return f"{axis} ({shown})"


def _row_labels(params: list[dict], runs: list[str]) -> list[str]:
    """Case labels without the axes every row of the panel shares (they go unsaid), run-prefixed
    when several runs are shown; cut to 70 characters."""
    shared = {k for k in set().union(*params) if all(k in p and p[k] == params[0][k] for p in params)}
    if len({repr(sorted(p.items())) for p in params}) == 1:
        shared = set()
    labels = [case_label({k: v for k, v in p.items() if k not in shared}) for p in params]
    labels = [f"{r}: {label}" if r else label for r, label in zip(runs, labels, strict=True)]
    return [_clip(label, 70) for label in labels]


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1].rstrip("\\") + "…"


# --- PEER -----------------------------------------------------------------------------------------
