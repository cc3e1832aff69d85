"""Legible at any size: a large suite is averaged or cut with a note, never silently; figures stay
within a sane size and their text readable at the page's width; every figure has alt text and a caption."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from matplotlib.text import Text
from report_records import CAPACITY_FACTORS, capacity_cases, case, mixed_cases, write_run

from moebench.report import DPI, make_report, plots
from moebench.report.data import load_runs

PAGE_PX = 1118  # the page's content width: 1150 px less 1em of padding each side
MAX_PX = 3000  # the tallest (or widest) image a reader can take in
MIN_PT = 7.0  # the smallest text, in points, as the page shows it


@pytest.fixture(scope="module")
def capacity_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("capacity")
    return write_run(folder / "capacity-20260102-030405-cpu.jsonl", capacity_cases(), kind="capacity",
                     suite="capacity")


def throughput_cases(variants: int = 50) -> list[dict]:
    """8 workloads (mode x dtype x T) x `variants` cases = 400 at the default: a throughput suite
    far larger than the bundled one. tokens/s falls with the variant index, so the fastest is v0."""
    cases = []
    for mode in ("forward", "forward_backward"):
        for dtype in ("float32", "bfloat16"):
            for tokens in (256, 2048):
                for i in range(variants):
                    params = {"variant": f"v{i}", "backend": "grouped_mm", "mode": mode, "dtype": dtype,
                              "tokens": tokens}
                    record = case(",".join(f"{k}={v}" for k, v in params.items()), params, tokens=tokens,
                                  spec={"dtype": dtype}, metrics={"tokens_per_s": 1e6 / (i + 1)})
                    record["workload"]["mode"] = mode
                    cases.append(record)
    return cases


def granularity_cases() -> list[dict]:
    """G = 1, 2, 4, 8 in two dtypes; routing grows with G and passes expert time at G = 8."""
    cases = []
    for dtype in ("float32", "bfloat16"):
        for G in (1, 2, 4, 8):
            phases = {"phase_router_s": 0.0005 * G, "phase_dispatch_s": 0.0005 * G, "phase_combine_s": 0.0005,
                      "phase_experts_s": 0.006, "analytic_routing_flop_share": 0.01 * G}
            cases.append(case(f"granularity={G},dtype={dtype}", {"granularity": G, "dtype": dtype},
                              spec={"dtype": dtype, "n_experts": 8 * G, "top_k": 2 * G}, metrics=phases))
    return cases


def _drawn(plot: plots.Plot) -> tuple[int, int, float]:
    """(width px, height px, smallest text in points as the page shows it) of a figure saved at the report's DPI."""
    plot.figure.canvas.draw()
    width, height = (plot.figure.get_size_inches() * DPI).round().astype(int)
    sizes = [t.get_fontsize() for t in plot.figure.findobj(Text) if t.get_visible() and t.get_text().strip()]
    return width, height, min(sizes) * min(1.0, PAGE_PX / width)


def _assert_legible(plot: plots.Plot) -> None:
    width, height, smallest_pt = _drawn(plot)
    assert width <= MAX_PX and height <= MAX_PX, (width, height)
    assert smallest_pt >= MIN_PT, smallest_pt


def test_a_400_case_capacity_run_puts_every_case_in_a_named_heatmap_row(capacity_run):
    _, df = load_runs([capacity_run])
    plot = plots.expert_load(df)
    assert sorted(plot.data["case_id"]) == sorted(df["case_id"]) and len(plot.data) == 400
    assert plot.data["heatmap row"].notna().all()
    # per E, 200 cases averaged over the 10 capacity factors: 20 rows of 10 cases, each named in its label
    for E in (8, 64):
        rows = plot.data[plot.data["E"] == E].groupby("heatmap row")["case_id"].nunique()
        assert len(rows) == 20 and set(rows) == {10}
        assert all(label.endswith("(mean of 10)") for label in rows.index)
    titles = [ax.get_title() for ax in plot.figure.axes[:2]]
    assert titles == [f"E = {E} experts: 200 cases in 20 rows, each the mean over capacity_factor (10 values)"
                      for E in (8, 64)]
    assert "capacity_factor (0.5, 0.75, 1.0" in plot.alt and "first" not in " ".join(titles)
    _assert_legible(plot)


def test_an_averaged_heatmap_row_is_the_mean_of_its_cases_load_over_mean(capacity_run):
    _, df = load_runs([capacity_run])
    ax = plots.expert_load(df).figure.axes[0]  # E = 8
    labels = [t.get_text() for t in ax.get_yticklabels()]
    row = labels.index("drop_policy=position, routing=zipf, top_k=1 (mean of 10)")
    drawn = ax.collections[0].get_array().reshape(len(labels), 8)[row]
    zipf = [c["loads"] for c in capacity_cases() if c["params"]["routing"] == "zipf"
            and c["params"]["n_experts"] == 8 and c["params"]["top_k"] == 1
            and c["params"]["drop_policy"] == "position"]
    assert len(zipf) == len(CAPACITY_FACTORS)
    by_hand = np.mean([np.asarray(v) / np.mean(v) for v in zipf], axis=0)
    assert list(drawn) == pytest.approx(list(by_hand))


def test_a_400_case_throughput_run_stays_under_3000_px_and_says_which_cases_it_shows(tmp_path):
    _, df = load_runs([write_run(tmp_path / "t.jsonl", throughput_cases(), kind="throughput", suite="throughput")])
    plot = plots.throughput(df)
    _assert_legible(plot)
    titles = [ax.get_title() for ax in plot.figure.axes[::2]]
    assert len(titles) == 8 and all(t.endswith(" fastest of 50 cases; all in the table)") for t in titles)
    shown = int(re.search(r"the (\d+) fastest", titles[0]).group(1))
    # the fastest cases are the ones kept: v0 ... v(shown-1), in every workload
    assert sorted(plot.data["case"].unique(), key=lambda s: int(s[1:].split("/")[0])) == \
        [f"v{i}/grouped_mm" for i in range(shown)]
    assert "fastest of 50 cases" in plot.alt


def test_a_throughput_run_that_fits_shows_every_case(tmp_path):
    _, df = load_runs([write_run(tmp_path / "t.jsonl", throughput_cases(8), kind="throughput", suite="throughput")])
    plot = plots.throughput(df)
    assert len(plot.data) == 64 and "fastest of" not in plot.alt  # the bundled throughput suite's size
    assert "64 cases drawn; the fastest, v0/grouped_mm (forward, float32, T=256), at 1,000,000 tokens/s" in plot.alt
    _assert_legible(plot)


def test_routing_tax_of_two_runs_and_two_dtypes_wraps_its_panels_to_stay_legible(tmp_path):
    runs = [write_run(tmp_path / f"g{i}.jsonl", granularity_cases(), kind="granularity", suite="granularity",
                      run_id=f"run{i}") for i in (1, 2)]
    _, df = load_runs(runs)
    plot = plots.routing_tax(df)
    assert sum(ax.get_visible() for ax in plot.figure.axes) == 4
    _assert_legible(plot)
    assert "against granularity G (1, 2, 4, 8)" in plot.alt and "from G = 8" in plot.alt


def _sections(html: str) -> list[tuple[str, str, str]]:
    """(section title, img alt, caption) of every figure section of a page."""
    return re.findall(r'<h2 id="fig-[^"]+">([^<]*)</h2>\n<img [^>]*alt="([^"]*)"[^>]*>\n<p class="caption">([^<]*)</p>',
                      html)


def test_every_figure_has_alt_text_naming_what_is_plotted_and_a_caption(tmp_path):
    html = make_report([write_run(tmp_path / "q.jsonl", mixed_cases())], tmp_path / "r.html").read_text()
    sections = _sections(html)
    one_run = [n for n in plots.FIGURES if n not in plots.SEVERAL_RUNS]  # the ratios have their own test
    assert [title for title, _, _ in sections] == [plots.FIGURES[n][0] for n in one_run]  # all drawn
    without = [title for title, alt, caption in sections
               if not alt.strip() or alt == title or " against " not in alt or not caption.strip()]
    assert without == []


def test_heatmap_colour_is_logarithmic_above_balance_so_one_hot_expert_does_not_wash_out_the_rest(capacity_run):
    _, df = load_runs([capacity_run])
    mesh = plots.expert_load(df).figure.axes[0].collections[0]
    vmax = mesh.norm.vmax
    assert vmax > 4  # the busiest expert (zipf, 64 experts, CF 3) holds 4.4x the mean
    # 0 (dead) and 1 (balanced) at the ends of the blue half; 1..vmax spread by ratio over the red half
    assert [float(mesh.norm(x)) for x in (0.0, 0.5, 1.0, vmax ** 0.5, vmax)] == pytest.approx([0, 0.25, 0.5, 0.75, 1])


def test_load_vectors_the_heatmap_cannot_divide_by_their_mean_are_left_out_and_the_report_renders(tmp_path):
    odd = {"null": [1, None, 3], "zeros": [0, 0], "text": "abc", "nan": [float("nan"), 2.0], "negative": [-1, 3]}
    cases = [case(name, {"variant": name}, loads=loads) for name, loads in odd.items()]
    cases.append(case("fine", {"variant": "fine"}, loads=[4, 2]))
    path = write_run(tmp_path / "odd.jsonl", cases, kind="capacity", suite="capacity")
    _, df = load_runs([path])
    assert list(plots.expert_load(df).data["case_id"]) == ["fine"]
    assert "expert_load.png" in make_report([path], tmp_path / "r.html").read_text()


def test_a_suite_sized_capacity_run_merges_only_the_two_policies_whose_kept_loads_are_equal(tmp_path):
    # the bundled suite's shape: 5 CF x 2 K x 5 routings x 2 policies = 100 cases per E, too many rows;
    # an expert keeps min(routed, C) under either policy, so merging the policies alone loses nothing
    run = write_run(tmp_path / "capacity.jsonl", capacity_cases((0.5, 1.0, 1.25, 1.5, 2.0)), kind="capacity",
                    suite="capacity")
    _, df = load_runs([run])
    plot = plots.expert_load(df)
    titles = [ax.get_title() for ax in plot.figure.axes[:2]]
    assert titles == [f"E = {E} experts: 100 cases in 50 rows, each the mean over drop_policy (2 values)"
                      for E in (8, 64)]
    assert set(plot.data.groupby(["E", "heatmap row"])["case_id"].nunique()) == {2}
