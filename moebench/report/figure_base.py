"""What every figure shares: the Plot record, an Agg figure without pyplot's global state, case labels,
run colours and log-axis ticks. Figures live one per module (report/fig_*.py); report/plots.py
lists them and says which suite kinds show which."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogFormatterSciNotation, LogLocator, NullFormatter

from moebench.report.data import ok_cases

ROUTING_PHASES = ("router", "dispatch", "combine")
# The widest a figure may be and still show at its own size: the page's 1150 px less its padding, at the
# report's 80 dpi (13.8 in = 1104 px). Wider figures are scaled down by the browser, text included.
PAGE_WIDTH_IN = 13.8
COMPUTE_PHASES = ("experts", "shared")


@dataclass
class Plot:
    figure: Figure
    data: pd.DataFrame  # the rows drawn: the conditions line is rendered from these
    alt: str = ""  # the image's alt text: what is plotted against what, per panel; the title when empty
    note: str = ""  # plain text under the caption: what the figure could not show (cases left out), named


def new_figure(width: float, height: float) -> Figure:
    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def new_axes(fig: Figure, *args, **kwargs):
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.8):
        return fig.subplots(*args, **kwargs)


def case_head(params: dict) -> tuple[str, list[str]]:
    """What names a case first ('dense FFN (equal_active)', a preset, or variant/backend) and its other
    axes as sorted k=v strings."""
    params = dict(params)
    if "baseline" in params:
        head = f"dense FFN ({params.pop('baseline')})"
    elif "preset" in params:
        head = str(params.pop("preset"))
    else:
        head = str(params.pop("variant", "") or "")
    if "backend" in params:
        backend = params.pop("backend")
        head = f"{head}/{backend}" if head else str(backend)
    return head, [f"{k}={v}" for k, v in sorted(params.items())]


def case_label(params: dict, drop: tuple[str, ...] = ()) -> str:
    """A short name from a case's params: variant/backend first, then the other axes as k=v."""
    head, rest = case_head({k: v for k, v in params.items() if k not in drop})
    return mathtext_escaped(", ".join(x for x in [head, *rest] if x) or "base")


def mathtext_escaped(text) -> str:
    """Text from results, escaped for matplotlib: "$...$" in a label is text, not a formula."""
    return str(text).replace("$", r"\$")


def finished_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The finished cases, with "run label": the run name as matplotlib should print it."""
    d = ok_cases(df).copy()
    d["run label"] = [mathtext_escaped(r) for r in d["run"]]
    return d


def text_column(df: pd.DataFrame, col: str) -> pd.Series:
    """df[col] as text, "?" where a record lacks it."""
    if col not in df:
        return pd.Series("?", index=df.index)
    return df[col].astype(object).where(df[col].notna(), "?").astype(str)


def run_colors(df: pd.DataFrame) -> dict:
    """run label -> colour, in order of first appearance."""
    runs = list(dict.fromkeys(df["run label"]))
    return dict(zip(runs, sns.color_palette(n_colors=max(len(runs), 1)), strict=True))


def has_several_runs(df: pd.DataFrame) -> bool:
    return df["run"].nunique() > 1


def draw_run_lines(data: pd.DataFrame, x: str, y: str, hue: str, runs: list[str], ax, **kwargs) -> None:
    """Lines through the points of each hue, every point marked (a lone point shows too); the run
    is the marker style when several runs are compared (style_order: the same marker in every panel)."""
    style = {"style": "run label", "style_order": runs, "markers": True} if len(runs) > 1 else {"marker": "o"}
    sns.lineplot(data, x=x, y=y, hue=hue, dashes=False, ax=ax, errorbar=None, markersize=7, **style, **kwargs)


def log_ticks(axis, values) -> None:
    """Labels on a log axis: 1-2-5 steps when the values span under two decades, decades beyond
    (matplotlib's own minor labels overlap over about two decades)."""
    v = pd.to_numeric(pd.Series(list(values)), errors="coerce")
    v = v[v > 0]
    subs = (1.0,) if v.empty or v.max() / v.min() >= 100 else (1.0, 2.0, 5.0)
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    # decades as 10^k; 1-2-5 steps as plain numbers (200, 500, 1000)
    axis.set_major_formatter(LogFormatterSciNotation() if subs == (1.0,) else FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def spans_decades(values: pd.Series, decades: float = 1.5) -> bool:
    v = values[values > 0].dropna()
    return len(v) > 1 and math.log10(v.max() / v.min()) >= decades


# --- throughput -----------------------------------------------------------------------------------
