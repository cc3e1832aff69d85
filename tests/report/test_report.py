"""moebench report: escaping, figure choice per suite kind, conditions lines, several runs, bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from report_records import ENV, case, mixed_cases, write_run

from moebench.cli import cli
from moebench.report import default_output, make_report, plots
from moebench.report.data import load_runs


def _images(html: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', html)


@pytest.fixture(scope="module")
def mixed_report(tmp_path_factory) -> Path:
    """One report of the mixed run, shared by the tests that only read it."""
    folder = tmp_path_factory.mktemp("mixed")
    return make_report([write_run(folder / "quick-20260102-030405-cpu.jsonl", mixed_cases())], folder / "r.html")


def _small_run(folder: Path) -> Path:
    return write_run(folder / "small.jsonl", [case("variant=hash", {"variant": "hash"})])


def test_text_from_results_is_escaped(mixed_report):
    html = mixed_report.read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in html  # the page itself carries no script, so any would be injected
    links = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert [x for x in links if not x.startswith("#fig-")] == [f"r_files/{n}.png" for n in plots.FIGURES]  # no network
    assert "RuntimeError: &lt;b&gt;boom&lt;/b&gt; &amp; more" in html  # failed case listed with its error


def test_mixed_kind_draws_every_figure_its_data_supports(mixed_report):
    assert _images(mixed_report.read_text()) == [f"r_files/{name}.png" for name in plots.FIGURES]
    files = sorted(p.name for p in (mixed_report.parent / "r_files").iterdir())
    assert files == sorted(f"{n}.png" for n in plots.FIGURES)


def test_a_suite_kind_draws_only_its_figures(tmp_path):
    path = write_run(tmp_path / "cap.jsonl", mixed_cases(), kind="capacity", suite="capacity")
    html = make_report([path], tmp_path / "r.html").read_text()
    assert _images(html) == ["r_files/drops.png", "r_files/expert_load.png"]  # no PEER plot in a capacity report


def test_a_figure_without_data_is_left_out(tmp_path):
    path = write_run(tmp_path / "t.jsonl", [case("variant=hash", {"variant": "hash"})], kind="mixed")
    _, df = load_runs([path])
    assert plots.routing_tax(df) is None and plots.drops(df) is None and plots.peer(df) is None
    html = make_report([path], tmp_path / "r.html").read_text()
    assert _images(html) == ["r_files/throughput.png", "r_files/memory.png"]


def test_every_figure_and_table_carries_the_conditions_from_the_records(mixed_report):
    html = mixed_report.read_text()
    sections = html.count("<h2") - 1  # the findings carry their conditions in each sentence
    lines = re.findall(r'<div class="conditions">Conditions: <div>([^<]*)</div>', html)
    assert len(lines) == sections == len(plots.FIGURES) + 2  # figures, all cases, failed cases
    expected = ("device cpu · dtype float32 · 2 threads · tokens 512 · timer cpu · torch 9.9.9+test · "
                "CPU Test CPU 9000 · git 0123456789ab (dirty)")
    assert set(lines) == {expected}


def test_conditions_name_the_gpu_when_the_run_had_one(tmp_path):
    path = write_run(tmp_path / "g.jsonl", [case("a", {"variant": "hash"})],
                     env={"device": "cuda", "gpu": {"name": "NVIDIA H200"}, "git": {"sha": "abc", "dirty": False}})
    html = make_report([path], tmp_path / "r.html").read_text()
    assert "device cuda" in html and "GPU NVIDIA H200" in html and "git abc ·" not in html
    assert "CPU Test CPU 9000" not in html


def test_several_runs_side_by_side(mixed_run, tmp_path):
    other = write_run(tmp_path / "other.jsonl", mixed_cases(), run_id="other-run", env={"threads": 1})
    html = make_report([mixed_run, other], tmp_path / "r.html").read_text()
    assert "<th class=\"text\">run</th>" in html  # the cases table gets a run column
    lines = re.findall(r"<div>([^<]*)</div>", html)
    assert any(line.startswith("other-run: ") and "2 threads" in line for line in lines)  # timing.threads wins
    assert any(line.startswith("quick-20260102-030405-cpu: ") for line in lines)
    runs, df = load_runs([mixed_run, other])
    assert plots.throughput(df).data["run"].nunique() == 2


def test_dollar_signs_in_run_names_and_labels_are_drawn_as_text(tmp_path):
    runs = [write_run(tmp_path / f"{i}.jsonl", mixed_cases(), run_id=f"run {i} $^{{$") for i in (1, 2)]
    html = make_report(runs, tmp_path / "r.html").read_text()  # mathtext would raise on "$^{$"
    assert "run 1 $^{$: device cpu" in html
    _, df = load_runs(runs)
    labels = [t.get_text() for t in plots.throughput(df).figure.axes[0].get_yticklabels()]
    assert r"odd=\$^{\$" in labels  # escaped for matplotlib, which prints a plain "$"


def test_the_same_run_given_twice_gets_two_labels(mixed_run):
    runs, _ = load_runs([mixed_run, mixed_run])
    assert [r.label for r in runs] == ["quick-20260102-030405-cpu", "quick-20260102-030405-cpu (2)"]


def test_pngs_are_deterministic(mixed_run, tmp_path):
    a = make_report([mixed_run], tmp_path / "a" / "r.html")
    b = make_report([mixed_run], tmp_path / "b" / "r.html")
    for png in (a.parent / "r_files").iterdir():
        assert png.read_bytes() == (b.parent / "r_files" / png.name).read_bytes(), png.name


def test_default_output_is_reports_suite_date(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["report", str(_small_run(tmp_path))])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "reports" / "quick-20260102.html").is_file()
    assert (tmp_path / "reports" / "quick-20260102_files" / "throughput.png").is_file()


def test_the_default_name_is_a_file_name_even_for_an_odd_suite_name(tmp_path):
    path = write_run(tmp_path / "x.jsonl", [case("a", {"variant": "hash"})], suite="../my suite")
    runs, _ = load_runs([path])
    assert default_output(runs) == Path("reports") / "my_suite-20260102.html"  # a file name, not a path


def test_a_second_report_replaces_the_first_and_leaves_no_temporary_files(tmp_path):
    run = _small_run(tmp_path)
    make_report([run], tmp_path / "r.html")
    (tmp_path / "r_files" / "stale.png").write_bytes(b"old")
    make_report([run], tmp_path / "r.html")
    assert not (tmp_path / "r_files" / "stale.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([run.name, "r.html", "r_files"])


def _bad_input(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("make_input, message", [
    (lambda t: t / "missing.jsonl", "no such results file"),
    (lambda t: (t / "empty_dir").mkdir() or t / "empty_dir", "no results (*.jsonl) in this folder"),
    (lambda t: _bad_input(t, "no_cases.jsonl", json.dumps({"schema": 1, "type": "run", "environment": ENV}) + "\n"),
     "no case records"),
    (lambda t: _bad_input(t, "old.jsonl", json.dumps({"schema": 0, "type": "run"}) + "\n"), "schema 0"),
    (lambda t: _bad_input(t, "no_run.jsonl", json.dumps({"schema": 1, "type": "case", "case_id": "a",
                                                         "status": "ok"}) + "\n"), "no run record"),
    (lambda t: _bad_input(t, "no_status.jsonl", "\n".join(json.dumps(r) for r in [
        {"schema": 1, "type": "run"}, {"schema": 1, "type": "case", "case_id": "a"}]) + "\n"), "lacks status"),
])
def test_bad_input_exits_2_and_writes_nothing(tmp_path, make_input, message):
    path = make_input(tmp_path)
    out = tmp_path / "out" / "r.html"
    result = CliRunner().invoke(cli, ["report", str(path), "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not out.parent.exists()


def test_the_output_must_be_an_html_file(mixed_run, tmp_path):
    result = CliRunner().invoke(cli, ["report", str(mixed_run), "-o", str(tmp_path / "r.png")])
    assert result.exit_code == 2 and "must end in .html" in result.output


# --- figure logic --------------------------------------------------------------------------------

def test_case_labels():
    assert plots.case_label({"variant": "token_choice", "backend": "loop", "tokens": 64}, ("tokens",)) \
        == "token_choice/loop"
    assert plots.case_label({"baseline": "equal_active"}) == "dense FFN (equal_active)"
    assert plots.case_label({"preset": "mixtral-8x7b", "backend": "grouped_mm", "tokens": 128}) \
        == "mixtral-8x7b/grouped_mm, tokens=128"


def test_routing_crossover_is_the_first_g_where_routing_time_exceeds_expert_time():
    assert plots.routing_crossover([8, 1, 4], [5.0, 1.0, 3.0], [4.0, 9.0, 3.0]) == 8  # G=4 only ties
    assert plots.routing_crossover([1, 2], [1.0, 2.0], [3.0, 3.0]) is None


def test_routing_tax_marks_the_crossover_and_overlays_both_analytic_shares(mixed_run):
    _, df = load_runs([mixed_run])
    plot = plots.routing_tax(df)
    ax = plot.figure.axes[0]
    assert [t.get_text() for t in ax.texts] == ["routing time > expert time\nfrom G=8"]  # 8 ms vs 5 ms
    labels = [line.get_label() for line in ax.get_lines()]
    assert any("analytic" in s for s in labels) and any("Krajewski" in s for s in labels)
    kraj = next(line for line in ax.get_lines() if "Krajewski" in line.get_label()).get_ydata()
    # E*G*c_r / (12*D*c_f + E*G*c_r) with D=64, E=8 base experts, c_f=6, c_r=14
    assert kraj[1] == pytest.approx(8 * 8 * 14 / (12 * 64 * 6 + 8 * 8 * 14))


def test_uniform_drop_reference_against_a_hand_count():
    # T=4 tokens, E=2, K=1, CF=1: C = 2; load X ~ Bin(4, 1/2); E[max(0, X-2)] = 1*4/16 + 2*1/16 = 6/16
    # per expert; 2 experts drop 12/16 of 4 assignments: 3/16.
    assert plots.uniform_reference(4, 2, 1, [1.0]) == [pytest.approx(3 / 16)]
    assert plots.uniform_reference(4, 2, 1, [2.0]) == [0.0]


def test_throughput_draws_the_expert_rate_against_the_ceiling(mixed_run):
    _, df = load_runs([mixed_run])
    data = plots.throughput(df).data
    # frac_of_ceiling = expert FLOP rate / ceiling, so the bar is 0.5 * 20 GFLOP/s
    assert list(data["expert GFLOP/s"].dropna()) == pytest.approx([10.0] * 6)
    assert "variant=hash" not in set(data["case_id"])  # failed cases are not drawn


def test_expert_load_rows_are_load_over_mean(mixed_run):
    _, df = load_runs([mixed_run])
    plot = plots.expert_load(df)
    mesh = plot.figure.axes[0].collections[0].get_array()
    loads = [130, 120, 140, 110, 125, 125, 130, 144]
    assert list(mesh.ravel()) == pytest.approx([v / (sum(loads) / 8) for v in loads])


def test_peer_draws_product_keys_and_brute_force_on_log_axes_with_the_floor(tmp_path):
    cases = [case(f"N={n},{r}", {"peer_experts": n, "peer_retrieval": r},
                  spec={"variant": "peer", "peer_experts": n, "peer_retrieval": r},
                  metrics={"latency_s": lat, "floor_s": n * 1e-7, "ceiling_flops_per_s": None})
             for n, r, lat in [(1024, "product", 0.01), (65536, "product", 0.02),
                               (1024, "brute", 0.02), (65536, "brute", 0.5)]]
    _, df = load_runs([write_run(tmp_path / "p.jsonl", cases, kind="peer", suite="peer")])
    ax = plots.peer(df).figure.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    lines = {line.get_label(): line for line in ax.get_lines()}
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(s.startswith("product,") for s in labels) and any(s.startswith("brute,") for s in labels)
    floor = lines["bandwidth floor: expert rows read / copy bandwidth"]
    assert list(floor.get_xdata()) == [1024, 65536] and list(floor.get_ydata()) == pytest.approx([1024e-7, 65536e-7])


def test_memory_labels_say_what_is_measured_and_what_is_analytic(mixed_run):
    _, df = load_runs([mixed_run])
    fig = plots.memory(df).figure
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == list(plots.MEMORY_QUANTITIES.values())
    assert [s.split(":")[0] for s in labels] == ["measured", "measured", "analytic", "analytic"]
