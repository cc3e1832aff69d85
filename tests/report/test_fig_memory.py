"""The memory figure compares like with like: measured peak against the analytic activation bound,
weights apart, and no traffic (bytes moved) on its axes."""

from __future__ import annotations

import pytest
from report_records import case, write_run

from moebench.report import plots
from moebench.report.data import load_runs

MIB = 2**20
TRAFFIC = {"predicted_bytes_moved": 40 * MIB, "predicted_dispatch_bytes": 3 * MIB}


def _memory_cases() -> list[dict]:
    forward = case("mode=forward,backend=loop", {"mode": "forward", "backend": "loop"},
                   metrics={"peak_bytes": 6 * MIB, "predicted_activation_bytes_upper": 10 * MIB,
                            "weight_bytes": 20 * MIB, **TRAFFIC})
    training = case("mode=train_step,backend=loop", {"mode": "train_step", "backend": "loop"},
                    metrics={"peak_bytes": 70 * MIB, "predicted_activation_bytes_upper": 10 * MIB,
                             "weight_bytes": 20 * MIB, **TRAFFIC})
    training["workload"]["mode"] = "train_step"
    return [forward, training]


def _bars(ax, gid: str) -> list[tuple[float, float]]:
    """(row centre, width in MiB) of each bar of one quantity, by row."""
    return sorted((p.get_y() + p.get_height() / 2, p.get_width()) for p in ax.patches if p.get_gid() == gid)


@pytest.fixture
def memory_plot(tmp_path):
    _, df = load_runs([write_run(tmp_path / "m.jsonl", _memory_cases(), kind="memory", suite="memory")])
    return plots.memory(df)


def test_peak_is_drawn_beside_the_activation_bound_and_weights_apart(memory_plot):
    activations, weights = memory_plot.figure.axes
    peak = _bars(activations, "peak_bytes")
    assert [w for _, w in peak] == pytest.approx([6, 70])  # forward row first, then the training step
    bound = _bars(activations, "predicted_activation_bytes_upper")
    assert [w for _, w in bound] == pytest.approx([10])  # the forward's bound only
    assert round(bound[0][0]) == round(peak[0][0]) == 0  # on the forward's row, beside its peak
    assert [w for _, w in _bars(weights, "weight_bytes")] == pytest.approx([20, 20])
    assert _bars(activations, "weight_bytes") == [] and _bars(weights, "peak_bytes") == []


def test_no_traffic_quantity_is_drawn(memory_plot):
    widths = [p.get_width() for ax in memory_plot.figure.axes for p in ax.patches]
    assert not any(w == pytest.approx(v / MIB) for w in widths for v in TRAFFIC.values())
    labels = [t.get_text() for t in memory_plot.figure.legends[0].get_texts()]
    assert not any("moved" in s or "dispatch" in s or "traffic" in s for s in labels)
    assert set(plots.MEMORY_QUANTITIES) == {"peak_bytes", "predicted_activation_bytes_upper", "weight_bytes"}


def test_a_training_step_row_says_why_it_has_no_bound(memory_plot):
    notes = [t.get_text() for t in memory_plot.figure.axes[0].texts]
    assert notes == ["no bound: train_step"]
    assert "1 of 2 cases have one" in memory_plot.alt
