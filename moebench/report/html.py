"""Page assembly. Every piece of text that came from a results file passes through esc()
(html.escape, quotes included): case labels, errors, run ids and environment strings are data,
never markup. The page is static: no scripts, no network resources, images beside it."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field

import pandas as pd

from moebench.report.data import column

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1150px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
img { max-width: 100%; height: auto; }
.conditions { font-size: 0.8em; color: #555; margin: 0.3em 0 1.5em; }
.conditions div { margin: 0.1em 0; }
table { border-collapse: collapse; font-size: 0.8em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.2em 0.6em; text-align: right; vertical-align: top;
         white-space: nowrap; }
th { background: #f4f4f4; } td.text, th.text { text-align: left; }
td.text { white-space: normal; overflow-wrap: anywhere; max-width: 32em; }
.table { overflow-x: auto; }
.bad { color: #b00; } .caption { font-size: 0.85em; margin: 0.3em 0; }
pre { white-space: pre-wrap; margin: 0; font-size: 0.95em; }
.findings li { margin: 0.35em 0; } .finding-conditions { color: #555; font-size: 0.9em; }
.findings li.unanswered { color: #555; font-style: italic; }
"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


@dataclass
class Section:
    title: str
    body: str  # already-escaped HTML
    conditions: list[str] = field(default_factory=list)  # plain text, escaped on rendering
    anchor: str = ""  # the section's id, the target of the findings' links ("fig-<name>" for a figure)


def figure_html(src: str, alt: str, width: int, height: int) -> str:
    return f'<img src="{esc(src)}" alt="{esc(alt)}" width="{width}" height="{height}">'


def conditions_html(lines: list[str]) -> str:
    rows = "".join(f"<div>{esc(line)}</div>" for line in lines)
    return f'<div class="conditions">Conditions: {rows}</div>'


def page(title: str, intro: list[str], sections: list[Section]) -> str:
    parts = [f"<h1>{esc(title)}</h1>", *(f"<p>{esc(p)}</p>" for p in intro)]
    for s in sections:
        heading = f'<h2 id="{esc(s.anchor)}">' if s.anchor else "<h2>"
        parts += [f"{heading}{esc(s.title)}</h2>", s.body]
        if s.conditions:
            parts.append(conditions_html(s.conditions))
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            + "\n".join(parts) + "\n</body>\n</html>\n")


def findings_html(findings, drawn: set[str]) -> str:
    """The findings as a list, each linked to its figure when that figure was drawn."""
    items = []
    for f in findings:
        link = f' <a href="#fig-{esc(f.figure)}">[figure]</a>' if f.figure in drawn else ""
        cond = f' <span class="finding-conditions">({esc(f.conditions)})</span>' if f.conditions else ""
        cls = "" if f.answered else ' class="unanswered"'
        items.append(f"<li{cls}>{esc(f.text)}{cond}{link}</li>")
    if not items:
        return "<p>No finding: these results hold nothing the findings of this suite kind are computed from.</p>"
    return '<ul class="findings">' + "".join(items) + "</ul>"


# --- tables ---------------------------------------------------------------------------------------

def _num(value, fmt: str, scale: float = 1.0) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "–"
    return "–" if math.isnan(v) else format(v * scale, fmt)


def table(headers: list[str], rows: list[list[str]], text_cols: set[int]) -> str:
    """rows hold already-escaped cell HTML; text_cols are left-aligned."""
    def cls(i: int) -> str:
        return ' class="text"' if i in text_cols else ""

    head = "".join(f"<th{cls(i)}>{esc(h)}</th>" for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f"<td{cls(i)}>{c}</td>" for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f'<div class="table"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def cases_table(df: pd.DataFrame, multi_run: bool) -> str:
    """The numbers behind the figures: median latency with p10-p90 and the 95% CI of the median
    (the record's `timing`), tokens/s, fraction of ceiling, drop rate, status."""
    headers = (["run"] if multi_run else []) + [
        "case", "status", "median ms", "p10–p90 ms", "95% CI ms", "samples", "tokens/s", "of ceiling", "drop rate",
        "uniform exp."]
    lat, p10, p90 = column(df, "latency_s"), column(df, "timing.p10"), column(df, "timing.p90")
    lo, hi, n = column(df, "timing.ci_low"), column(df, "timing.ci_high"), column(df, "timing.n")
    tps, frac, drop = column(df, "tokens_per_s"), column(df, "frac_of_ceiling"), column(df, "drop_rate")
    expected = column(df, "expected_drop_rate_uniform")
    rows = []
    for i in range(len(df)):
        status = df["status"].iloc[i]
        row = ([esc(df["run"].iloc[i])] if multi_run else []) + [
            esc(df["case_id"].iloc[i]).replace(",", ",<wbr>"),  # case ids have no spaces to wrap at
            f'<span class="{"" if status == "ok" else "bad"}">{esc(status)}</span>',
            _num(lat.iloc[i], ".3f", 1e3),
            f"{_num(p10.iloc[i], '.3f', 1e3)}–{_num(p90.iloc[i], '.3f', 1e3)}",
            f"{_num(lo.iloc[i], '.3f', 1e3)}–{_num(hi.iloc[i], '.3f', 1e3)}",
            _num(n.iloc[i], ".0f"), _num(tps.iloc[i], ",.0f"), _num(frac.iloc[i], ".1%"), _num(drop.iloc[i], ".2%"),
            _num(expected.iloc[i], ".2%")]
        rows.append(row)
    return table(headers, rows, {0, 1} if multi_run else {0})


def failures_table(df: pd.DataFrame, multi_run: bool) -> str:
    headers = (["run"] if multi_run else []) + ["case", "status", "error"]
    rows = [([esc(r["run"])] if multi_run else []) + [esc(r["case_id"]), esc(r["status"]),
                                                       f"<pre>{esc(r['error'] or '')}</pre>"]
            for _, r in df.iterrows()]
    return table(headers, rows, set(range(len(headers))))
