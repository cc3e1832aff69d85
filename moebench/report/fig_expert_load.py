"""Expert-load heatmaps: each case's computed assignments per expert over the mean."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import TwoSlopeNorm

from moebench.report.figure_base import Plot, case_label, finished_rows, new_axes, new_figure

MAX_HEATMAP_ROWS = 40


def expert_load(df: pd.DataFrame) -> Plot | None:
    """Kept load per expert divided by the mean load, one heatmap row per case, one panel per E."""
    d = finished_rows(df)
    d = d[[isinstance(v, list) and len(v) > 1 and sum(v) > 0 for v in d["loads"]]].copy()
    if d.empty:
        return None
    d["E"] = [len(v) for v in d["loads"]]
    sizes = sorted(d["E"].unique())
    heights = [min(int((d["E"] == e).sum()), MAX_HEATMAP_ROWS) for e in sizes]
    fig = new_figure(11, 1.2 + sum(0.9 + 0.24 * h for h in heights))
    axes = new_axes(fig, len(sizes), 1, squeeze=False, gridspec_kw={"height_ratios": [0.9 + 0.24 * h for h in heights]})
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
