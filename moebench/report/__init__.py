"""`moebench report`: one static HTML page with its PNG figures in a folder beside it.

    make_report(["results/quick-...jsonl"], "reports/quick.html")
    -> reports/quick.html + reports/quick_files/*.png

Figures are chosen by the suite kind of each run (report.plots.FIGURES_BY_KIND); a figure whose
data is absent is left out. Everything is rendered into a temporary folder next to the output and
moved into place at the end, so bad input (ValueError) or a crash leaves nothing half-written.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import tempfile
from datetime import datetime
from pathlib import Path

from moebench.report import plots
from moebench.report.data import conditions, load_runs
from moebench.report.findings import findings_for
from moebench.report.html import Section, cases_table, esc, failures_table, figure_html, findings_html, page

__all__ = ["make_report", "default_output"]

DPI = 80
TABLE_NOTE = ("median, p10-p90 and the 95% confidence interval of the median are per step, from the timed "
              "samples; of ceiling: expert FLOP rate / the measured dense-GEMM rate (PEER: bandwidth floor / "
              "latency); drop rate: measured, beside its binomial expectation under uniform routing.")


def default_output(runs) -> Path:
    """reports/<suite>-<date>.html, the date the (newest) run started."""
    suites = re.sub(r"[^\w.+-]", "_", "+".join(dict.fromkeys(r.suite for r in runs))).strip("._") or "results"
    dates = sorted(str(r.record.get("started") or "")[:10] for r in runs)
    date = dates[-1].replace("-", "") if dates and dates[-1] else datetime.now().strftime("%Y%m%d")
    return Path("reports") / f"{suites}-{date}.html"


def make_report(paths, out: str | Path | None = None) -> Path:
    """Write the report of the results files/folders `paths`; returns the HTML path."""
    runs, df = load_runs(paths)
    out = Path(out) if out is not None else default_output(runs)
    if out.suffix != ".html":
        raise ValueError(f"{out}: the report path must end in .html")
    files_name = f"{out.stem}_files"
    multi = len(runs) > 1
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.stem}-", dir=out.parent))
    try:
        (tmp / files_name).mkdir()
        sections = []
        for name in plots.figures_for(r.kind for r in runs):
            title, make, caption = plots.FIGURES[name]
            png = tmp / files_name / f"{name}.png"
            plot = make(df)
            if plot is None:
                continue
            plot.figure.savefig(png, dpi=DPI, metadata={"Software": None})
            width, height = _png_size(png)
            img = figure_html(f"{files_name}/{name}.png", plot.alt or title, width, height)
            note = f"\n<p class=\"caption\">{esc(plot.note)}</p>" if plot.note else ""
            sections.append(Section(title, f"{img}\n<p class=\"caption\">{esc(caption)}</p>{note}",
                                    conditions(plot.data, runs), anchor=f"fig-{name}"))
        sections.append(Section("All cases", cases_table(df, multi) + f'\n<p class="caption">{esc(TABLE_NOTE)}</p>',
                                conditions(df, runs)))
        drawn = {s.anchor.removeprefix("fig-") for s in sections}
        findings = findings_for(df, (r.kind for r in runs))
        sections.insert(0, Section("Findings", findings_html(findings, drawn), anchor="findings"))
        failed = df[df["status"] != "ok"]
        if not failed.empty:
            sections.append(Section(f"Failed cases ({len(failed)})", failures_table(failed, multi),
                                    conditions(failed, runs)))
        title = "moebench report: " + ", ".join(f"{r.suite} ({r.label})" for r in runs)
        intro = [f"{len(df)} cases, {int((df['status'] == 'ok').sum())} ok; suite kinds: "
                 + ", ".join(dict.fromkeys(r.kind for r in runs))]
        (tmp / out.name).write_text(page(title, intro, sections), encoding="utf-8")
        _move_into_place(tmp, out, files_name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG's IHDR chunk (bytes 16-24)."""
    with path.open("rb") as f:
        head = f.read(24)
    return struct.unpack(">II", head[16:24])


def _move_into_place(tmp: Path, out: Path, files_name: str) -> None:
    """Images first, then the page: a reader never sees a page whose images are missing."""
    target = out.parent / files_name
    if target.exists():
        os.replace(target, tmp / "old_files")
    os.replace(tmp / files_name, target)
    os.replace(tmp / out.name, out)
