"""The ratios figure and finding: with two or more runs, each case's ratio, CI and verdict are the ones
`moebench compare` prints for the same files; cases one run lacks are named; large suites are split
into panels, never cut; a single run draws nothing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from matplotlib.collections import LineCollection, PathCollection
from matplotlib.colors import to_hex
from report_records import case, write_run

from moebench.cli import cli
from moebench.report import make_report, plots
from moebench.report.data import load_runs
from moebench.report.fig_ratios import PANEL_CASES, VERDICT_COLORS, comparisons, ratios
from moebench.report.findings import findings_for

BASE = [0.010 * (1 + 0.002 * i) for i in range(12)]  # a steady case: 12 samples within 2.2%
FACTORS = {"slow": 1.5, "fast": 0.6, "same": 1.02}  # candidate samples = baseline samples x factor


def timed(case_id: str, samples: list[float], **kwargs) -> dict:
    """A finished case carrying its raw per-step samples (what compare judges); no suite axes, so its
    label in the figure is its case id."""
    record = case(case_id, {}, **kwargs)
    record["samples"] = {"latency_s": samples}
    return record


def ab_runs(folder: Path) -> tuple[Path, Path]:
    """Baseline and candidate: one SLOW, one FAST, one SAME, one AMBIGUOUS (2 samples a side cannot
    reach p < 0.01), a case only the baseline has and one only the candidate has."""
    base = [timed(name, BASE) for name in FACTORS] + [timed("noisy", [0.010, 0.011]), timed("gone", BASE)]
    cand = [timed(name, [x * f for x in BASE]) for name, f in FACTORS.items()]
    cand += [timed("noisy", [0.013, 0.0143]), timed("new", BASE)]
    return (write_run(folder / "base.jsonl", base, suite="s", run_id="base"),
            write_run(folder / "cand.jsonl", cand, suite="s", run_id="cand"))


def drawn_points(ax) -> dict[str, tuple[float, float, float, str]]:
    """case label -> (ratio, CI low, CI high, colour) as drawn: the points (scatter) and their bars (hlines)."""
    labels = [t.get_text() for t in ax.get_yticklabels()]
    points = [c for c in ax.collections if isinstance(c, PathCollection)]
    bars = [c for c in ax.collections if isinstance(c, LineCollection)]
    out = {}
    for dots, lines in zip(points, bars, strict=True):
        colour = to_hex(dots.get_facecolor()[0])
        for (x, y), seg in zip(dots.get_offsets(), lines.get_segments(), strict=True):
            assert seg[0][1] == seg[1][1] == y  # the bar is on the point's row
            out[labels[round(y)]] = (float(x), float(seg[0][0]), float(seg[1][0]), colour)
    return out


def test_drawn_ratio_ci_and_verdict_equal_compares_for_each_case(tmp_path):
    base, cand = ab_runs(tmp_path)
    result = CliRunner().invoke(cli, ["compare", str(base), str(cand), "--format", "json"])
    timing = {v["case_id"]: v for v in json.loads(result.output)["verdicts"] if v["metric"] == "latency_s"}
    assert {k: v["verdict"] for k, v in timing.items()} == {
        "slow": "SLOW", "fast": "FAST", "same": "SAME", "noisy": "AMBIGUOUS"}  # the fixture is what it says
    plot = ratios(load_runs([base, cand])[1])
    drawn = drawn_points(plot.figure.axes[0])
    assert set(drawn) == set(timing)
    for case_id, v in timing.items():
        assert drawn[case_id] == pytest.approx((v["ratio"], v["ci_low"], v["ci_high"], drawn[case_id][3]))
        assert drawn[case_id][3] == VERDICT_COLORS[v["verdict"]]
    ax = plot.figure.axes[0]
    numbers = dict(zip([t.get_text() for t in ax.get_yticklabels()],
                       [t.get_text() for t in ax.child_axes[0].get_yticklabels()], strict=True))
    assert numbers == {c: f"{v['ratio']:.2f} [{v['ci_low']:.2f}, {v['ci_high']:.2f}]" for c, v in timing.items()}


def test_cases_sorted_largest_ratio_first(tmp_path):
    plot = ratios(load_runs(ab_runs(tmp_path))[1])
    labels = [t.get_text() for t in plot.figure.axes[0].get_yticklabels()]
    assert labels == ["slow", "noisy", "same", "fast"]  # ratios 1.5, 1.3, 1.02, 0.6


def test_cases_in_one_run_only_are_named_in_note_and_alt(tmp_path):
    plot = ratios(load_runs(ab_runs(tmp_path))[1])
    assert "only in base (1): gone" in plot.note and "only in cand (1): new" in plot.note
    assert plot.alt == ("latency ratio of cand over base for 4 cases: 1 SLOW, 1 FAST, 1 SAME, 1 AMBIGUOUS; "
                        "2 cases not compared, listed under the figure.")


def test_one_run_draws_no_ratios_and_no_ratio_finding(tmp_path):
    base, _ = ab_runs(tmp_path)
    _, df = load_runs([base])
    assert ratios(df) is None
    for kind in ("capacity", "mixed"):
        assert not [f for f in findings_for(df, [kind]) if f.figure == "ratios"]


def test_finding_counts_verdicts_and_names_the_largest_slowdown_with_its_ci(tmp_path):
    _, df = load_runs(ab_runs(tmp_path))
    [finding] = [f for f in findings_for(df, ["throughput"]) if f.figure == "ratios"]
    slow = next(v for v in comparisons(df)[0].verdicts if v.case_id == "slow")
    assert finding.text.startswith("cand against base: 1 SLOW, 1 FAST, 1 SAME, 1 AMBIGUOUS of 4 cases; ")
    assert f"largest slowdown is slow at {slow.ratio:.3f}× [95% CI {slow.ci_low:.3f}, {slow.ci_high:.3f}], SLOW" \
        in finding.text
    assert slow.ratio == pytest.approx(1.5)
    assert "2 cases not compared" in finding.text and finding.answered


def test_runs_without_a_common_case_say_so_in_an_unanswered_finding(tmp_path):
    a = write_run(tmp_path / "a.jsonl", [timed("x", BASE)], run_id="a")
    b = write_run(tmp_path / "b.jsonl", [timed("y", BASE)], run_id="b")
    _, df = load_runs([a, b])
    assert ratios(df) is None
    [finding] = [f for f in findings_for(df, ["ci"]) if f.figure == "ratios"]
    assert not finding.answered
    assert finding.text == ("No case of b could be compared with a: they share no case id "
                            "(1 case only in a, 1 case only in b).")


def test_three_runs_draw_one_series_per_other_run_against_the_first(tmp_path):
    runs = [write_run(tmp_path / f"{i}.jsonl", [timed("c", [x * f for x in BASE])], run_id=f"r{i}")
            for i, f in enumerate((1.0, 2.0, 0.5))]
    _, df = load_runs(runs)
    assert [(c.baseline, c.run, c.verdicts[0].ratio) for c in comparisons(df)] == [
        ("r0", "r1", pytest.approx(2.0)), ("r0", "r2", pytest.approx(0.5))]
    ax = ratios(df).figure.axes[0]
    markers = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert sorted(float(m.get_offsets()[0][0]) for m in markers) == pytest.approx([0.5, 2.0])
    assert markers[0].get_paths()[0] != markers[1].get_paths()[0]  # another marker per run


def test_a_large_suite_is_split_into_panels_of_at_most_60_cases_none_dropped(tmp_path):
    n = 130
    base = [timed(f"case{i}", BASE) for i in range(n)]
    cand = [timed(f"case{i}", [x * (0.5 + i / n) for x in BASE]) for i in range(n)]
    _, df = load_runs([write_run(tmp_path / "a.jsonl", base, run_id="a"),
                       write_run(tmp_path / "b.jsonl", cand, run_id="b")])
    plot = ratios(df)
    panels = [ax for ax in plot.figure.axes if ax.get_visible() and ax.get_yticklabels()]
    rows = [[t.get_text() for t in ax.get_yticklabels()] for ax in panels]
    assert len(panels) == 3 and all(len(r) <= PANEL_CASES for r in rows)
    flat = [label for r in rows for label in r]
    assert sorted(flat) == sorted(f"case{i}" for i in range(n))  # every case once
    assert flat[0] == f"case{n - 1}" and flat[-1] == "case0"  # the largest ratio first, over all panels
    assert [ax.get_title() for ax in panels] == ["cases 1–44 of 130", "cases 45–88 of 130", "cases 89–130 of 130"]


def test_runs_whose_common_cases_cannot_be_compared_say_why_in_an_unanswered_finding(tmp_path):
    a = write_run(tmp_path / "a.jsonl", [timed("x", BASE)], run_id="a")
    b = write_run(tmp_path / "b.jsonl", [case("x", {}, status="crashed", error="segfault")], run_id="b")
    [finding] = [f for f in findings_for(load_runs([a, b])[1], ["ci"]) if f.figure == "ratios"]
    assert not finding.answered and "not compared (1): x (FAILED: crashed: segfault)" in finding.text


def test_records_compare_cannot_use_are_listed_not_drawn(tmp_path):
    """Records without samples (the other report tests' cases), a failed case, another dtype: no ratio,
    each named with compare's reason; the report still renders."""
    base = [case("nosamples", {}), timed("failed", BASE), timed("dtype", BASE), timed("ok", BASE)]
    cand = [case("nosamples", {}), case("failed", {}, status="error", error="boom"),
            timed("dtype", BASE, spec={"dtype": "bfloat16"}), timed("ok", BASE)]
    paths = [write_run(tmp_path / "a.jsonl", base, run_id="a"), write_run(tmp_path / "b.jsonl", cand, run_id="b")]
    [comp] = comparisons(load_runs(paths)[1])
    why = dict(comp.not_compared)
    assert list(why) == ["nosamples", "failed", "dtype"] and [v.case_id for v in comp.verdicts] == ["ok"]
    assert "without samples" in why["nosamples"] and why["failed"].startswith("FAILED")
    assert why["dtype"] == "dtype differs: float32 against bfloat16"
    html = make_report(paths, tmp_path / "r.html").read_text()
    assert "nosamples (baseline: case &#x27;nosamples&#x27;: status &#x27;ok&#x27; without samples)" in html


def test_runs_on_different_devices_are_compared_on_latency_not_cpu_time(tmp_path):
    def run(name, device, factor):
        record = timed("c", [x * factor for x in BASE])
        record["samples"]["cpu_s"] = BASE  # the CPU time stays: a GPU's work does not show in it
        return write_run(tmp_path / f"{name}.jsonl", [record], run_id=name, env={"device": device})

    _, df = load_runs([run("cpu", "cpu", 1.0), run("gpu", "cuda", 0.1)])
    [comp] = comparisons(df)
    assert comp.mode == "latency_s" and comp.verdicts[0].ratio == pytest.approx(0.1)
    _, same_device = load_runs([run("cpu", "cpu", 1.0), run("cpu2", "cpu", 0.1)])
    assert comparisons(same_device)[0].verdicts[0].ratio == pytest.approx(1.0)  # compare's auto: cpu_s


def test_report_of_two_runs_shows_the_ratios_figure_and_links_its_finding(tmp_path):
    html = make_report(list(ab_runs(tmp_path)), tmp_path / "r.html").read_text()
    assert 'id="fig-ratios"' in html and '<img src="r_files/ratios.png"' in html
    assert re.search(r'<li>cand against base: [^<]*<span class="finding-conditions">[^<]*</span> '
                     r'<a href="#fig-ratios">\[figure\]</a></li>', html)
    assert "ratios" in plots.figures_for(["capacity"])  # every kind asks for it; one run draws nothing


def test_a_case_whose_code_changed_is_drawn_as_changed_never_slow(tmp_path):
    base, cand = timed("c", BASE), timed("c", [x * 2 for x in BASE])
    base["code"], cand["code"] = {"experts": "onednn"}, {"experts": "torch"}
    _, df = load_runs([write_run(tmp_path / "a.jsonl", [base], run_id="a"),
                       write_run(tmp_path / "b.jsonl", [cand], run_id="b")])
    [v] = comparisons(df)[0].verdicts
    assert (v.verdict, v.ratio) == ("CHANGED", pytest.approx(2.0))
    assert drawn_points(ratios(df).figure.axes[0])["c"][3] == VERDICT_COLORS["CHANGED"]
    [finding] = [f for f in findings_for(df, ["ci"]) if f.figure == "ratios"]
    assert not finding.answered
    assert finding.text == ("b against a: 0 SLOW, 0 FAST, 0 SAME, 0 AMBIGUOUS, 1 CHANGED of 1 case: no case ran the "
                            "same code in both runs, so no slowdown is named; 1 case ran other code in the two runs "
                            "(not counted as a slowdown).")


def test_the_largest_slowdown_is_never_a_case_whose_code_changed(tmp_path):
    base, cand = timed("c", BASE), timed("c", [x * 2 for x in BASE])
    base["code"], cand["code"] = {"experts": "onednn"}, {"experts": "torch"}
    steady = [timed("s", BASE), timed("s", [x * 1.02 for x in BASE])]
    _, df = load_runs([write_run(tmp_path / "a.jsonl", [base, steady[0]], run_id="a"),
                       write_run(tmp_path / "b.jsonl", [cand, steady[1]], run_id="b")])
    [finding] = [f for f in findings_for(df, ["ci"]) if f.figure == "ratios"]
    same = next(v for v in comparisons(df)[0].verdicts if v.case_id == "s")
    # c is 2x slower but ran other code: the largest slowdown of one code path is s, at 1.02x
    assert same.verdict == "SAME" and same.ratio == pytest.approx(1.02)
    assert finding.text == (f"b against a: 0 SLOW, 0 FAST, 1 SAME, 0 AMBIGUOUS, 1 CHANGED of 2 cases; the largest "
                            f"slowdown is s at {same.ratio:.3f}× [95% CI {same.ci_low:.3f}, {same.ci_high:.3f}], SAME; "
                            "1 case ran other code in the two runs (not counted as a slowdown).")
