"""Every suite kind of throughput, ci, models, routers, memory, lifelong and quick (mixed) opens its report
with at least one answered finding, for hand-made records shaped like that suite's."""

from __future__ import annotations

import re

import pytest
from findings_records import timed
from report_records import write_run

from moebench.report import make_report

MiB = 2**20
LOADS = [120, 130, 140, 110, 125, 125, 130, 144]  # per expert: what the expert-load figure draws


def _routed(backend: str, latency: float, **kwargs) -> dict:
    return timed(f"backend={backend}", {"variant": "token_choice", "backend": backend}, latency,
                 spec={"backend": backend}, metrics={"load_max_over_mean": 1.2}, loads=LOADS, **kwargs)


def _measured(backend: str, peak_mib: float) -> dict:
    return timed(f"backend={backend}", {"backend": backend}, 0.01, spec={"backend": backend},
                 metrics={"peak_bytes": peak_mib * MiB, "predicted_activation_bytes_upper": 4 * MiB})


DENSE = timed("baseline=equal_active", {"baseline": "equal_active"}, 0.005, spec={"variant": "dense", "d_ff": 256})
HASH = timed("variant=hash", {"variant": "hash", "backend": "sort_gather"}, 0.012, spec={"variant": "hash"},
             metrics={"load_max_over_mean": 1.5}, loads=LOADS)
LIFELONG = [timed("variant=lifelong,expand=8", {"variant": "lifelong", "n_experts": 8, "expand": 8}, 0.03,
                  mode="train_step", expand=8, spec={"variant": "lifelong", "n_experts": 8},
                  metrics={"optimizer_state_bytes": MiB}),
            timed("variant=token_choice,n_experts=16", {"variant": "token_choice", "n_experts": 16}, 0.04,
                  mode="train_step", spec={"n_experts": 16}, metrics={"optimizer_state_bytes": 2 * MiB})]
SHAPED = {  # kind: cases shaped like that bundled suite's (suites/<suite>.yaml)
    "throughput": [_routed("sort_gather", 0.01), _routed("grouped_mm", 0.008), DENSE],
    "ci": [_routed("sort_gather", 0.01), _routed("grouped_mm", 0.008)],
    "models": [timed("preset=mixtral-8x7b", {"preset": "mixtral-8x7b"}, 0.5, tokens=128)],
    "routers": [_routed("sort_gather", 0.01), HASH],
    "memory": [_measured("loop", 1), _measured("sort_gather", 2)],
    "lifelong": LIFELONG,
    "mixed": [_routed("sort_gather", 0.01), DENSE, HASH, *LIFELONG],
}


def _findings_section(html: str) -> str:
    start = html.index('<h2 id="findings">')
    return html[start:html.index("<h2", start + 1)]


@pytest.mark.parametrize("kind", sorted(SHAPED))
def test_a_report_of_each_suite_kind_opens_with_an_answered_finding(tmp_path, kind):
    path = write_run(tmp_path / f"{kind}.jsonl", SHAPED[kind], kind=kind, suite=kind)
    html = make_report([path], tmp_path / "r.html").read_text()
    assert html.index("<h2") == html.index('<h2 id="findings">')  # the first section
    answered = re.findall(r"<li>(.*?)</li>", _findings_section(html))
    assert answered, f"no answered finding in the {kind} report"
    assert all('href="#fig-' in item for item in answered)  # each links to its figure, drawn in this report


@pytest.mark.parametrize("kind", sorted(SHAPED))
def test_a_report_whose_cases_all_failed_renders_and_its_findings_say_they_cannot_answer(tmp_path, kind):
    failed = [{**c, "status": "error", "error": "RuntimeError: boom", "metrics": {}} for c in SHAPED[kind]]
    path = write_run(tmp_path / f"{kind}.jsonl", failed, kind=kind, suite=kind)
    section = _findings_section(make_report([path], tmp_path / "r.html").read_text())
    assert '<li class="unanswered">' in section and "<li>" not in section


def test_each_finder_reads_only_the_runs_whose_kind_calls_for_it(tmp_path):
    throughput = write_run(tmp_path / "t.jsonl", SHAPED["throughput"], kind="throughput", suite="throughput")
    ci = write_run(tmp_path / "ci.jsonl", SHAPED["ci"], kind="ci", suite="ci")
    section = _findings_section(make_report([throughput, ci], tmp_path / "r.html").read_text())
    assert "hot paths" in section and "the dense FFN of equal active parameters" in section
    assert "No dense FFN of equal active parameters" not in section  # the ci run is no throughput run
    assert section.count("hot paths") == 1  # and the throughput run no ci run
