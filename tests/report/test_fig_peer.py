"""The PEER figure: every configuration drawn against its own bandwidth floor, never another's."""

from __future__ import annotations

import pytest
from matplotlib.colors import to_hex
from report_records import case, write_run

from moebench.report import plots
from moebench.report.data import load_runs


def _peer_case(n: int, heads: int, k: int, latency: float, floor: float, retrieval: str = "product") -> dict:
    params = {"peer_experts": n, "peer_heads": heads, "peer_k": k, "peer_retrieval": retrieval}
    return case(",".join(f"{a}={b}" for a, b in params.items()), params,
                spec={"variant": "peer", **params},
                metrics={"latency_s": latency, "floor_s": floor, "ceiling_flops_per_s": None})


def _floors(ax) -> dict[str, object]:
    return {str(line.get_gid()).removeprefix("floor: "): line for line in ax.get_lines()
            if str(line.get_gid()).startswith("floor: ")}


def test_two_configurations_at_one_n_each_keep_their_own_floor(tmp_path):
    # H=1 and H=16 both at N=1024 and N=65536: the floors differ 16x at the same N. A floor per N (the
    # minimum over configurations) would put H=16's latency above H=1's floor.
    cases = [_peer_case(n, h, 8, lat, floor) for h, floor in [(1, 1e-4), (16, 1.6e-3)]
             for n, lat in [(1024, 0.002 * h), (65536, 0.004 * h)]]
    _, df = load_runs([write_run(tmp_path / "p.jsonl", cases, kind="peer", suite="peer")])
    plot = plots.peer(df)
    ax = plot.figure.axes[0]
    floors = _floors(ax)
    assert set(floors) == {"product, H=1, k=8, D=64", "product, H=16, k=8, D=64"}
    assert list(floors["product, H=1, k=8, D=64"].get_xdata()) == [1024, 65536]
    assert list(floors["product, H=1, k=8, D=64"].get_ydata()) == pytest.approx([1e-4, 1e-4])
    assert list(floors["product, H=16, k=8, D=64"].get_ydata()) == pytest.approx([1.6e-3, 1.6e-3])
    latency = {line.get_label(): line for line in ax.get_lines() if line.get_gid() == "latency"}
    for config, floor in floors.items():  # a floor is drawn in its own series' colour
        assert to_hex(floor.get_color()) == to_hex(latency[config].get_color())
        assert floor.get_linestyle() == "--"
    assert "2 configurations" in plot.alt and "own bandwidth floor" in plot.alt


def test_configurations_measured_at_one_n_are_rows_beside_their_own_floor(tmp_path):
    sweep = [_peer_case(n, 8, 16, lat, 2e-3) for n, lat in [(1024, 0.004), (65536, 0.009)]]
    variations = [_peer_case(65536, 1, 8, 0.0012, 2e-4), _peer_case(65536, 16, 32, 0.04, 1.4e-2)]
    _, df = load_runs([write_run(tmp_path / "p.jsonl", sweep + variations, kind="peer", suite="peer")])
    plot = plots.peer(df)
    sweep_ax, rows_ax = plot.figure.axes
    assert set(_floors(sweep_ax)) == {"product, H=8, k=16, D=64"}
    floors = _floors(rows_ax)  # the sweep's point at N=65536 is a row too, for comparison
    assert {c: list(f.get_xdata()) for c, f in floors.items()} == {
        "product, H=1, k=8, D=64": [pytest.approx(2e-4)], "product, H=8, k=16, D=64": [pytest.approx(2e-3)],
        "product, H=16, k=32, D=64": [pytest.approx(1.4e-2)]}
    rows = [t.get_text() for t in rows_ax.get_yticklabels()]
    assert rows == ["product, H=1, k=8, D=64, N=65536", "product, H=8, k=16, D=64, N=65536",
                    "product, H=16, k=32, D=64, N=65536"]  # by latency
    for config, floor in floors.items():  # each floor marker sits on its own configuration's row
        assert rows[int(floor.get_ydata()[0])].startswith(config)
    assert rows_ax.get_xscale() == "log"
    assert "3 configurations at N = 65536" in plot.alt


def test_a_case_without_a_floor_draws_its_latency_and_no_floor(tmp_path):
    cases = [_peer_case(n, 4, 8, 0.01, None) for n in (1024, 4096)]
    _, df = load_runs([write_run(tmp_path / "p.jsonl", cases, kind="peer", suite="peer")])
    ax = plots.peer(df).figure.axes[0]
    assert _floors(ax) == {}
    assert [list(line.get_ydata()) for line in ax.get_lines() if line.get_gid() == "latency"] == [[0.01, 0.01]]
