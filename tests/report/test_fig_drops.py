"""The drops figure: dropped count and dropped routing-weight mass per policy, the drawn values
against the records, the binomial reference per facet, and no facet left out of a large suite."""

from __future__ import annotations

import pytest
from report_records import case, write_run

from moebench.report import make_report
from moebench.report.data import load_runs
from moebench.report.fig_drops import drops, line_id, panel_id, uniform_reference


def capacity_case(cf: float, policy: str, routing: str, *, E: int = 8, K: int = 2, drop: float, mass: float | None,
                  tokens: int = 512, min_capacity: int = 0) -> dict:
    metrics = {"drop_rate": drop, "expected_drop_rate_uniform": 0.0}
    if mass is not None:
        metrics["dropped_weight_frac"] = mass
    params = {"capacity_factor": cf, "n_experts": E, "top_k": K, "routing": routing, "drop_policy": policy}
    if min_capacity:
        params["min_capacity"] = min_capacity
    record = case(",".join(f"{k}={v}" for k, v in params.items()), params, metrics=metrics, tokens=tokens,
                  spec={"capacity_factor": cf, "n_experts": E, "top_k": K, "drop_policy": policy,
                        "min_capacity": min_capacity})
    record["workload"]["routing"] = routing
    return record


# zipf: both policies drop the same count, probs drops lighter assignments; uniform: the masses agree
RECORDS = [  # (cf, policy, routing, drop_rate, dropped_weight_frac)
    (1.0, "position", "zipf", 0.30, 0.28), (1.0, "probs", "zipf", 0.30, 0.17),
    (2.0, "position", "zipf", 0.10, 0.09), (2.0, "probs", "zipf", 0.10, 0.04),
    (1.0, "position", "uniform", 0.05, 0.05), (1.0, "probs", "uniform", 0.05, 0.05),
]


def frame(tmp_path, records, name="cap"):
    path = write_run(tmp_path / f"{name}.jsonl", records, kind="capacity", suite="capacity")
    return load_runs([path])[1]


def lines_by_id(ax) -> dict:
    return {line.get_gid(): line for line in ax.lines}


def panel(plot, facet: str, value: str):
    (ax,) = [ax for ax in plot.figure.axes if ax.get_gid() == panel_id(facet, value)]
    return ax


FACET = "token_choice, E=8, K=2, T=512"


def test_mass_lines_are_the_recorded_dropped_weight_and_the_policies_differ(tmp_path):
    plot = drops(frame(tmp_path, [capacity_case(cf, p, r, drop=d, mass=m) for cf, p, r, d, m in RECORDS]))
    mass = lines_by_id(panel(plot, FACET, "dropped weight"))
    position, probs = mass[line_id("zipf", "position", "cap")], mass[line_id("zipf", "probs", "cap")]
    assert list(position.get_xdata()) == [1.0, 2.0] and list(position.get_ydata()) == [0.28, 0.09]
    assert list(probs.get_ydata()) == [0.17, 0.04]
    assert position.get_linestyle() != probs.get_linestyle()  # told apart by linestyle, same colour
    assert position.get_color() == probs.get_color()
    count = lines_by_id(panel(plot, FACET, "drop rate"))
    assert list(count[line_id("zipf", "position", "cap")].get_ydata()) == [0.30, 0.10]
    assert list(count[line_id("zipf", "probs", "cap")].get_ydata()) == [0.30, 0.10]  # equal counts
    assert list(mass[line_id("uniform", "probs", "cap")].get_ydata()) == [0.05]  # a lone point is drawn


def test_binomial_reference_is_drawn_per_facet_on_the_count_row_only(tmp_path):
    # two facets at the same CF: K = 1 and K = 2 have different binomial expectations
    records = [capacity_case(1.0, "position", "uniform", K=K, drop=0.05, mass=0.05) for K in (1, 2)]
    plot = drops(frame(tmp_path, records))
    for K in (1, 2):
        facet = f"token_choice, E=8, K={K}, T=512"
        ref = lines_by_id(panel(plot, facet, "drop rate"))["binomial reference"]
        assert list(ref.get_ydata()) == pytest.approx(uniform_reference(512, 8, K, ref.get_xdata()))
        assert "binomial reference" not in lines_by_id(panel(plot, facet, "dropped weight"))
    one, two = (lines_by_id(panel(plot, f"token_choice, E=8, K={K}, T=512", "drop rate"))["binomial reference"]
                for K in (1, 2))
    assert one.get_ydata()[10] != pytest.approx(two.get_ydata()[10])


def test_two_runs_are_told_apart_by_marker_and_named_in_the_alt_text(tmp_path):
    base = write_run(tmp_path / "base.jsonl", [capacity_case(1.0, "probs", "zipf", drop=0.3, mass=0.2)],
                     kind="capacity", suite="capacity")
    cand = write_run(tmp_path / "cand.jsonl", [capacity_case(1.0, "probs", "zipf", drop=0.3, mass=0.1)],
                     kind="capacity", suite="capacity")
    plot = drops(load_runs([base, cand])[1])
    mass = lines_by_id(panel(plot, FACET, "dropped weight"))
    one, two = mass[line_id("zipf", "probs", "base")], mass[line_id("zipf", "probs", "cand")]
    assert list(one.get_ydata()) == [0.2] and list(two.get_ydata()) == [0.1]
    assert one.get_marker() != two.get_marker()
    assert "one marker per run (base, cand)" in plot.alt


def test_a_capacity_floor_gets_its_own_facet_and_reference(tmp_path):
    records = [capacity_case(0.5, "position", "uniform", drop=d, mass=d, min_capacity=c)
               for c, d in ((0, 0.5), (200, 0.2))]
    plot = drops(frame(tmp_path, records))
    plain = lines_by_id(panel(plot, FACET, "drop rate"))["binomial reference"]
    floored = lines_by_id(panel(plot, FACET + ", min C=200", "drop rate"))["binomial reference"]
    assert list(floored.get_ydata()) == pytest.approx(uniform_reference(512, 8, 2, floored.get_xdata(), 200))
    assert floored.get_ydata()[0] < plain.get_ydata()[0]  # at CF 0.5, C = 64 without the floor, 200 with it


def test_results_without_the_mass_still_draw_the_count_and_say_so(tmp_path):
    plot = drops(frame(tmp_path, [capacity_case(1.0, "position", "zipf", drop=0.3, mass=None)]))
    mass_ax = panel(plot, FACET, "dropped weight")
    assert [line.get_gid() for line in mass_ax.lines] == []
    assert any("not recorded" in t.get_text() for t in mass_ax.texts)
    assert list(lines_by_id(panel(plot, FACET, "drop rate"))[line_id("zipf", "position", "cap")].get_ydata()) == [0.3]


def test_every_facet_of_a_large_suite_is_drawn_and_the_alt_text_names_them(tmp_path):
    records = [capacity_case(cf, p, r, E=E, K=K, drop=0.1, mass=0.05 if p == "probs" else 0.1)
               for cf in (0.5, 1.0, 1.25, 1.5, 2.0) for E in (8, 64) for K in (1, 2)
               for r in ("uniform", "balanced", "zipf", "khot", "dirichlet") for p in ("position", "probs")]
    assert len(records) == 200
    plot = drops(frame(tmp_path, records))
    facets = [f"token_choice, E={E}, K={K}, T=512" for E in (8, 64) for K in (1, 2)]
    for facet in facets:
        for value in ("drop rate", "dropped weight"):
            assert len([g for g in lines_by_id(panel(plot, facet, value)) if g != "binomial reference"]) == 10
    assert "4 facet(s)" in plot.alt and all(f in plot.alt for f in facets)
    assert "dashed: probs" in plot.alt and "solid: position" in plot.alt
    width_px = plot.figure.get_figwidth() * 80
    assert width_px <= 1150 - 46  # within the page's content width: shown at its own size, never scaled down


def test_the_capacity_report_uses_the_drops_alt_text(tmp_path):
    path = write_run(tmp_path / "cap.jsonl", [capacity_case(cf, p, r, drop=d, mass=m) for cf, p, r, d, m in RECORDS],
                     kind="capacity", suite="capacity")
    html = make_report([path], tmp_path / "r.html").read_text()
    assert 'alt="Line charts against capacity factor, 1 facet(s)' in html
