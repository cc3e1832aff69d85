"""Granularity findings: the first G past 25% / 50% routing share and the G=16 / G=1 throughput ratio,
against hand counts; and what they say when the data cannot answer."""

from __future__ import annotations

from report_records import case, write_run

from moebench.report.data import load_runs
from moebench.report.findings import FINDINGS_BY_KIND, findings_for
from moebench.report.findings.granularity import granularity_findings


def g_case(G: int, routing_frac: float, tokens_per_s: float, dtype: str = "float32", status: str = "ok"):
    return case(f"dtype={dtype},granularity={G}", {"dtype": dtype, "granularity": G}, spec={"dtype": dtype},
                metrics={"routing_frac": routing_frac, "tokens_per_s": tokens_per_s}, status=status,
                error=None if status == "ok" else "RuntimeError: out of memory", tokens=2048)


def findings(tmp_path, cases, name="granularity.jsonl"):
    _, df = load_runs([write_run(tmp_path / name, cases, kind="granularity", suite="granularity")])
    return granularity_findings(df)


SWEEP = {1: (0.10, 8000.0), 2: (0.20, 7000.0), 4: (0.30, 6000.0), 8: (0.55, 4000.0), 16: (0.60, 2000.0)}


def test_first_g_past_a_quarter_and_a_half_of_the_layer(tmp_path):
    share, throughput = findings(tmp_path, [g_case(G, f, t) for G, (f, t) in SWEEP.items()])
    # by hand: 0.10, 0.20 <= 25% < 0.30 at G=4; 0.30 <= 50% < 0.55 at G=8
    assert share.answered and share.figure == "routing_tax"
    assert "more than 25% of the summed phase time first at G=4 (30.0%)" in share.text
    assert "more than 50% first at G=8 (55.0%)" in share.text
    assert share.conditions == "float32, T=2048, forward, 2 threads, cpu timer, device cpu"
    # 2000 / 8000 tokens/s
    assert throughput.answered and "throughput at G=16 is 0.25× that at G=1" in throughput.text
    assert throughput.figure == "throughput"  # the figure that draws tokens/s
    assert "2,000 against 8,000 tokens/s" in throughput.text


def test_a_share_never_reached_says_up_to_the_largest_g(tmp_path):
    share, _ = findings(tmp_path, [g_case(G, f, 1000.0) for G, f in [(1, 0.05), (16, 0.2), (64, 0.3)]])
    assert "more than 25% of the summed phase time first at G=64 (30.0%)" in share.text
    assert "more than 50% never up to G=64 (at most 30.0%, at G=64)" in share.text
    assert share.answered


def test_one_g_only_cannot_answer(tmp_path):
    share, throughput = findings(tmp_path, [g_case(16, 0.6, 1000.0)])
    assert not share.answered
    assert "cannot be told: only G=16 has a measured routing share (a sweep over G is needed)" in share.text
    assert not throughput.answered and "the case at G=1 was not run" in throughput.text


def test_a_failed_g_is_said_not_guessed(tmp_path):
    cases = [g_case(1, 0.1, 8000.0), g_case(2, 0.0, 0.0, status="error"), g_case(4, 0.3, 6000.0),
             g_case(16, 0.0, 0.0, status="error"), g_case(32, 0.6, 3000.0)]
    share, throughput = findings(tmp_path, cases)
    # G=2 failed before the first measured G past 25% (G=4): G=2 could be the answer
    assert not share.answered
    assert "first at G=4 (30.0%), though G=2 has no measurement and could be earlier" in share.text
    assert "more than 50% first at G=32 (60.0%), though G=2, G=16 have no measurement" in share.text
    assert not throughput.answered and "the case at G=16 failed or has no tokens/s" in throughput.text


def test_every_dtype_and_run_gets_its_own_findings(tmp_path):
    cases = [g_case(G, f, t, dtype) for dtype in ("float32", "bfloat16") for G, (f, t) in SWEEP.items()]
    first = write_run(tmp_path / "a.jsonl", cases, kind="granularity", suite="granularity", run_id="cpu")
    second = write_run(tmp_path / "b.jsonl", cases[:5], kind="granularity", suite="granularity", run_id="gpu",
                       env={"device": "cuda"})
    _, df = load_runs([first, second])
    found = [f for f in findings_for(df, ["granularity"]) if f.figure in ("routing_tax", "throughput")]  # not ratios'
    assert [f.text.split(":")[0] for f in found] == ["float32"] * 2 + ["bfloat16"] * 2 + ["float32"] * 2
    assert found[0].conditions == "run cpu, float32, T=2048, forward, 2 threads, cpu timer, device cpu"
    assert found[-1].conditions == "run gpu, float32, T=2048, forward, 2 threads, cpu timer, device cuda"
    assert FINDINGS_BY_KIND["granularity"] == ("granularity",)


def test_no_granularity_axis_no_finding(tmp_path):
    _, df = load_runs([write_run(tmp_path / "t.jsonl", [case("variant=hash", {"variant": "hash"})])])
    assert granularity_findings(df) == []


def test_a_record_without_routing_frac_gets_it_from_its_phase_times(tmp_path):
    def phases(G, router, experts):
        return case(f"granularity={G}", {"granularity": G}, tokens=2048,
                    metrics={"phase_router_s": router, "phase_dispatch_s": 0.001, "phase_combine_s": 0.001,
                             "phase_experts_s": experts, "tokens_per_s": 1000.0})
    # (router + 0.002) / (router + 0.002 + experts): G=1 0.003/0.010 = 30%, G=8 0.008/0.010 = 80%
    share, _ = findings(tmp_path, [phases(1, 0.001, 0.007), phases(8, 0.006, 0.002)])
    assert "more than 25% of the summed phase time first at G=1 (30.0%); more than 50% first at G=8 (80.0%)" \
        in share.text


def test_all_failed_cannot_answer(tmp_path):
    share, throughput = findings(tmp_path, [g_case(G, 0.0, 0.0, status="error") for G in (1, 16)])
    assert not share.answered  # the sweep ran: its failures, not a longer sweep, are what to look at
    assert "cannot be told: no case has a measured routing share (G=1, G=16 did not finish" in share.text
    assert not throughput.answered
    assert throughput.text == ("float32: throughput at G=16 relative to G=1 cannot be given: the case at G=1 failed "
                               "or has no tokens/s and the case at G=16 failed or has no tokens/s.")


def test_a_share_passed_at_the_smallest_g_measured_is_said_to_be_that(tmp_path):
    share, _ = findings(tmp_path, [g_case(4, 0.3, 1000.0), g_case(8, 0.6, 900.0)])
    assert "first at G=4 (30.0%), the smallest G measured; more than 50% first at G=8 (60.0%)." in share.text
