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

import pytest
from report_records import mixed_cases, write_run

from moebench.report import make_report
from moebench.report.plots import FIGURES

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
  var pre = document.createElement("pre"); pre.id = "__probe"; pre.textContent = JSON.stringify(result);
  document.body.appendChild(pre);
});
</script>"""


def open_in_chromium(page: Path, profile: Path) -> tuple[dict, str, str]:
    """(probe result, dumped DOM, chromium's stderr) for a copy of `page` with the probe injected."""
    html = page.read_text(encoding="utf-8")
    assert html.count("<head>") == 1
    probe_copy = page.with_name(page.stem + ".probe.html")  # same folder: the relative image paths hold
    probe_copy.write_text(html.replace("<head>", "<head>\n" + PROBE, 1), encoding="utf-8")
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
           "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000", "--dump-dom",
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
    assert probe["images"] == len(FIGURES) and probe["decoded"] == len(FIGURES)  # the mixed run draws every figure
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
