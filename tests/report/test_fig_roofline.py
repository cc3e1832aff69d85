"""The roofline: each forward case at (analytic FLOPs / analytic bytes, FLOPs / latency), one panel per
run and dtype, under that panel's own measured roof and bandwidth line."""

from __future__ import annotations

import numpy as np
import pytest
from report_records import case, write_run

from moebench.report import plots
from moebench.report.data import load_runs

G = 1e9


def _case(name: str, dtype: str, flops: float, bytes_moved: float, latency: float, ceiling, bandwidth: float,
          variant: str = "token_choice", mode: str = "forward", **metrics) -> dict:
    record = case(name, {"variant": variant, "dtype": dtype, "name": name}, spec={"variant": variant, "dtype": dtype},
                  metrics={"flops": flops, "predicted_bytes_moved": bytes_moved, "latency_s": latency,
                           "flops_per_s": flops / latency, "ceiling_flops_per_s": ceiling,
                           "copy_bandwidth_bytes_per_s": bandwidth, **metrics})
    record["workload"]["mode"] = mode
    return record


CASES = [  # two configurations per dtype, each dtype with its own ceilings
    _case("a", "float32", 4e9, 1e8, 0.1, 1e11, 4e10),          # intensity 40, 40 GFLOP/s
    _case("b", "float32", 1e9, 1e8, 0.05, 1.5e11, 3e10),       # intensity 10, 20 GFLOP/s
    _case("c", "bfloat16", 8e9, 1e8, 0.02, 8e11, 5e10),        # intensity 80, 400 GFLOP/s
    _case("d", "bfloat16", 2e9, 4e8, 0.1, 6e11, 5e10, variant="dense"),  # intensity 5, 20 GFLOP/s
    _case("t", "float32", 3e9, 1e8, 0.1, 9e11, 9e10, mode="train_step"),  # FLOPs 3x a forward: left out
]


def _panels(plot) -> dict[str, object]:
    return {ax.get_title(): ax for ax in plot.figure.axes if ax.get_visible()}


def _line(ax, gid: str):
    lines = [line for line in ax.get_lines() if line.get_gid() == gid]
    return lines[0] if lines else None


def _points(ax) -> list[tuple[float, float]]:
    xy = [(x, y) for line in ax.get_lines() if line.get_gid() == "cases"
          for x, y in zip(line.get_xdata(), line.get_ydata(), strict=True)]
    return sorted(xy)


@pytest.fixture
def plot(tmp_path):
    _, df = load_runs([write_run(tmp_path / "run.jsonl", CASES, kind="throughput", suite="throughput")])
    return plots.roofline(df)


def test_each_case_is_placed_by_intensity_and_achieved_rate_in_its_dtype_panel(plot):
    panels = _panels(plot)
    assert set(panels) == {"run, float32", "run, bfloat16"}
    assert _points(panels["run, float32"]) == [pytest.approx((10, 20)), pytest.approx((40, 40))]
    assert _points(panels["run, bfloat16"]) == [pytest.approx((5, 20)), pytest.approx((80, 400))]


def test_each_panel_is_under_its_own_roof_and_bandwidth_line(plot):
    for title, roof, bandwidth in [("run, float32", 1.5e11, 4e10), ("run, bfloat16", 8e11, 5e10)]:
        ax = _panels(plot)[title]
        roof_line, bandwidth_line = _line(ax, "roof"), _line(ax, "bandwidth")
        roof_y = list(roof_line.get_ydata())
        assert roof_y == pytest.approx([roof / G] * len(roof_y))  # the panel's highest GEMM rate, no other's
        x = np.asarray(bandwidth_line.get_xdata())
        assert list(bandwidth_line.get_ydata()) == pytest.approx(list(bandwidth * x / G))
        ridge = roof / bandwidth  # the two meet where bandwidth x intensity reaches the roof
        assert x.max() == pytest.approx(ridge) and min(roof_line.get_xdata()) == pytest.approx(ridge)


def test_training_steps_are_left_out_and_counted(plot):
    assert len(plot.data) == 4 and "t" not in set(plot.data["case_id"])
    assert "left out: 1 training steps" in plot.figure.get_suptitle()
    assert "Left out: 1 training steps" in plot.alt and "2 panels" in plot.alt


def test_peer_has_no_roof_and_bytes_come_from_the_floor_when_memory_was_not_measured(tmp_path):
    peer = _case("p", "float32", 1e9, None, 0.01, None, 2e10, variant="peer", bandwidth_floor_s=0.05)
    _, df = load_runs([write_run(tmp_path / "peer.jsonl", [peer], kind="peer", suite="peer")])
    ax = _panels(plots.roofline(df))["peer, float32\nno FLOP roof measured (PEER has no GEMM)"]
    assert _line(ax, "roof") is None  # a PEER step has no GEMM ceiling to stand under
    assert _points(ax) == [pytest.approx((1e9 / (0.05 * 2e10), 100))]  # bytes = floor x bandwidth = 1e9
    x = np.asarray(_line(ax, "bandwidth").get_xdata())
    assert list(_line(ax, "bandwidth").get_ydata()) == pytest.approx(list(2e10 * x / G))


def test_the_roofline_is_drawn_for_the_kinds_that_measure_its_ceilings():
    for kind in ("throughput", "granularity", "models", "routers", "peer", "mixed"):
        assert "roofline" in plots.figures_for([kind]), kind
    for kind in ("ci", "memory", "lifelong", "capacity"):
        assert "roofline" not in plots.figures_for([kind]), kind


def test_alt_text_keeps_a_dollar_sign_as_written(tmp_path):
    odd = _case("o", "float32", 1e9, 1e8, 0.1, 1e11, 4e10, variant="$x$")
    _, df = load_runs([write_run(tmp_path / "odd.jsonl", [odd])])
    plot = plots.roofline(df)
    assert "($x$)" in plot.alt and "\\$" not in plot.alt


def test_a_case_that_dropped_assignments_is_placed_by_the_work_that_ran(tmp_path):
    # 4 GFLOP useful, 2.5 GFLOP computed (a capacity dropped the rest): intensity 25, 25 GFLOP/s, under the roof
    dropping = _case("a", "float32", 4e9, 1e8, 0.1, 3e10, 4e10, computed_flops=2.5e9)
    _, df = load_runs([write_run(tmp_path / "run.jsonl", [dropping], kind="throughput", suite="throughput")])
    (ax,) = _panels(plots.roofline(df)).values()
    assert _points(ax) == [pytest.approx((25, 25))]
