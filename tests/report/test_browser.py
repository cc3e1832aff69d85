"""The report in a real browser: Debian's Chromium, headless, opens a test-only copy of the page.

The copy gets one inline script at the top of <head> that records console.error calls, uncaught
errors and failed resource loads (an <img> that does not decode fires `error`), counts calls to
alert(), and on `load` writes {images, decoded, errors, alerts} as JSON into the DOM. Chromium's
--dump-dom prints the DOM after the load event, and the test parses that. Chromium's own
console log (--enable-logging=stderr) is checked too. A control page with a missing image and a
script error shows that the harness sees failures. Skipped where no chromium binary exists.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image
from report_records import capacity_cases, case, mixed_cases, write_run

from moebench.report import make_report
from moebench.report.plots import FIGURES, SEVERAL_RUNS

CHROMIUM = next((p for p in (shutil.which("chromium"), "/usr/bin/chromium") if p and Path(p).exists()), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)")

PROBE = """<script>
window.__errors = []; window.__alerts = 0;
window.alert = function () { window.__alerts++; };
var __consoleError = console.error;
console.error = function () {
  window.__errors.push(Array.from(arguments).join(" "));
  __consoleError.apply(console, arguments);
};
window.addEventListener("error", function (e) {
  window.__errors.push("error: " + (e.message || (e.target && e.target.src) || "?"));
}, true);
window.addEventListener("load", function () {
  var imgs = Array.from(document.images);
  var decoded = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var result = {images: imgs.length, decoded: decoded, errors: window.__errors, alerts: window.__alerts};
  // layout, for the legibility checks: what each image is and how large it is drawn
  var h2 = document.querySelector("h2");
  result.firstH2 = h2 ? h2.textContent : null;
  result.viewport = window.innerWidth;
  result.pageWidth = document.documentElement.scrollWidth;
  result.tables = Array.from(document.querySelectorAll("div.table")).map(function (t) {
    return {scrollWidth: t.scrollWidth, clientWidth: t.clientWidth, rows: t.querySelectorAll("tbody tr").length};
  });
  result.imgs = imgs.map(function (i) {
    var section = i.previousElementSibling;
    return {alt: i.alt, section: section && section.tagName === "H2" ? section.textContent : null,
            shownWidth: i.clientWidth, naturalWidth: i.naturalWidth, naturalHeight: i.naturalHeight};
  });
  var pre = document.createElement("pre"); pre.id = "__probe"; pre.textContent = JSON.stringify(result);
  document.body.appendChild(pre);
});
</script>"""


def open_in_chromium(page: Path, profile: Path, width: int = 1150) -> tuple[dict, str, str]:
    """(probe result, dumped DOM, chromium's stderr) for a copy of `page` with the probe injected."""
    html = page.read_text(encoding="utf-8")
    assert html.count("<head>") == 1
    probe_copy = page.with_name(page.stem + ".probe.html")  # same folder: the relative image paths hold
    probe_copy.write_text(html.replace("<head>", "<head>\n" + PROBE, 1), encoding="utf-8")
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
           "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000", f"--window-size={width},3000",
           "--dump-dom",
           probe_copy.resolve().as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r'<pre id="__probe">(.*?)</pre>', done.stdout, re.S)
    assert found, f"the probe never ran; chromium said:\n{done.stderr[-2000:]}"
    return json.loads(found.group(1)), done.stdout, done.stderr


def console_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def test_every_image_decodes_no_console_errors_and_script_in_a_label_is_text(tmp_path):
    results = write_run(tmp_path / "quick-20260102-030405-cpu.jsonl", mixed_cases())
    page = make_report([results], tmp_path / "report" / "quick.html")
    probe, dom, stderr = open_in_chromium(page, tmp_path / "profile")
    one_run = len(FIGURES) - len(SEVERAL_RUNS)
    assert probe["images"] == one_run and probe["decoded"] == one_run  # the mixed run draws every one-run figure
    assert probe["errors"] == [] and console_lines(stderr) == []
    assert probe["alerts"] == 0
    # the label is in the DOM as text, and the only <script> element is the probe
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
    assert dom.count("<script") == 1


def test_the_harness_sees_a_missing_image_and_a_script_error(tmp_path):
    (tmp_path / "img").mkdir()
    page = tmp_path / "control.html"
    page.write_text('<!DOCTYPE html><html><head><title>c</title></head><body><img src="img/missing.png">'
                    "<script>console.error('boom'); alert(1); undefinedFunction();</script></body></html>")
    probe, _, stderr = open_in_chromium(page, tmp_path / "profile")
    assert probe["images"] == 1 and probe["decoded"] == 0 and probe["alerts"] == 1
    assert "boom" in probe["errors"] and any("undefinedFunction" in e for e in probe["errors"])
    assert any("missing.png" in e for e in probe["errors"])
    assert console_lines(stderr)


def test_a_comparison_of_two_130_case_runs_opens_with_its_ratios_at_full_size(tmp_path):
    def run(name: str, factor: float) -> Path:
        cases = []
        for i in range(130):
            record = case(f"case{i}", {"case": i})
            record["samples"] = {"latency_s": [0.01 * factor * (1 + 0.001 * j) for j in range(8)]}
            cases.append(record)
        return write_run(tmp_path / f"{name}.jsonl", cases, run_id=name)

    page = make_report([run("base", 1.0), run("cand", 1.3)], tmp_path / "report" / "ab.html")
    probe, dom, stderr = open_in_chromium(page, tmp_path / "profile")
    assert probe["decoded"] == probe["images"] and probe["errors"] == [] and console_lines(stderr) == []
    width = int(re.search(r'<img src="ab_files/ratios.png" alt="[^"]*" width="(\d+)"', dom).group(1))
    assert width <= 1150 - 32  # the page's max-width less its padding: the figure is never scaled down


PAGE_WIDTH = 1150


@pytest.fixture(scope="module")
def capacity_page(tmp_path_factory) -> Path:
    """The report of a 400-case capacity-shaped run (E = 8 and 64, 5 routings, 10 CFs, 2 policies)."""
    folder = tmp_path_factory.mktemp("capacity400")
    run = write_run(folder / "capacity-20260102-030405-cpu.jsonl", capacity_cases(), kind="capacity",
                    suite="capacity")
    return make_report([run], folder / "report" / "capacity.html")


def test_a_400_case_capacity_report_opens_legible_with_findings_first(capacity_page, tmp_path):
    probe, _, stderr = open_in_chromium(capacity_page, tmp_path / "profile", PAGE_WIDTH)
    assert probe["images"] == probe["decoded"] == 2  # drops and expert load
    assert probe["errors"] == [] and console_lines(stderr) == []
    assert probe["firstH2"] == "Findings"
    assert probe["pageWidth"] <= probe["viewport"] == PAGE_WIDTH  # nothing pushes the page sideways
    for img in probe["imgs"]:
        assert img["shownWidth"] <= PAGE_WIDTH and img["naturalHeight"] <= 3000 and img["naturalWidth"] <= 3000
    expert_load = next(i for i in probe["imgs"] if i["section"] == "Expert load")
    assert "200 cases in 20 rows, each the mean over the cases that differ only in capacity_factor" \
        in expert_load["alt"]
    # the "All cases" table holds every case and fits the page: long case ids wrap instead of widening it
    all_cases = max(probe["tables"], key=lambda t: t["rows"])
    assert all_cases["rows"] == 400 and all_cases["scrollWidth"] <= all_cases["clientWidth"]


def test_a_screenshot_of_the_400_case_report_shows_the_page_and_its_figures(capacity_page, tmp_path):
    shot = tmp_path / "shot.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'p'}",
           "--hide-scrollbars", f"--window-size={PAGE_WIDTH},3000", "--virtual-time-budget=10000",
           f"--screenshot={shot}", capacity_page.resolve().as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    pixels = image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (3000, PAGE_WIDTH)
    ink = (pixels < 0.9).any(axis=2)  # anything not (near) white
    assert ink.mean() > 0.02  # not blank: text, figures
    colours = len(np.unique((pixels[ink] * 15).round(), axis=0))
    assert colours > 20  # the figures' colours, not only black text on white
    rows_with_ink = ink.any(axis=1)
    assert rows_with_ink[:200].any() and rows_with_ink[-1500:].any()  # drawn from top to (near) bottom
    # the heatmap is shown at its own size, not shrunk (its 7 pt row labels stay 7 pt), and says what it averages
    probe, _, _ = open_in_chromium(capacity_page, tmp_path / "profile", PAGE_WIDTH)
    expert_load = next(i for i in probe["imgs"] if i["section"] == "Expert load")
    assert expert_load["shownWidth"] == expert_load["naturalWidth"] and expert_load["naturalHeight"] <= 3000
    assert expert_load["alt"] != "Expert load" and "mean over" in expert_load["alt"]
