"""compare.py: verdict rules on constructed samples, exact counters, comparability, output, CLI exit codes."""

import html.parser
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from moebench import compare
from moebench.cli import cli
from moebench.compare import NotComparable, compare_runs, timing_verdict
from moebench.store import ResultWriter, latest_case_records


def run_record(suite="ci", device="cpu"):
    return {"schema": 1, "type": "run", "suite": suite, "options": {"device": device, "threads": 1}}


def case_record(case_id, samples, status="ok", dtype="float32", seed=0, loads=(3, 5), **metrics):
    base = {"flops": 1000.0, "drop_rate": 0.0, "tokens_dropped_frac": 0.0, "capacity": None, "params": 42}
    return {"schema": 1, "type": "case", "case_id": case_id, "status": status, "error": None,
            "spec": {"dtype": dtype}, "workload": {"seed": seed}, "loads": list(loads),
            "samples": {"latency_s": list(samples)}, "metrics": {**base, **metrics}}


def noisy(median, n=40, seed=0, spread=0.02):
    return list(median * (1 + spread * np.random.default_rng(seed).standard_normal(n)))


def test_verdicts_follow_the_rule():
    base = noisy(1.0, seed=1)
    assert timing_verdict("c", base, noisy(1.20, seed=2), 0.05, 0.01).verdict == "SLOW"
    assert timing_verdict("c", base, noisy(0.80, seed=2), 0.05, 0.01).verdict == "FAST"
    # a significant 2% change is below the threshold: SAME
    v = timing_verdict("c", base, noisy(1.02, seed=2), 0.05, 0.01)
    assert v.verdict == "SAME" and v.p_value < 0.01
    # past the threshold on 3 samples a side: the test cannot agree (exact p >= 0.1)
    v = timing_verdict("c", [1.0, 1.01, 0.99], [1.3, 1.31, 1.29], 0.05, 0.01)
    assert v.verdict == "AMBIGUOUS" and v.p_value == pytest.approx(0.1)
    assert timing_verdict("c", [1.0], [2.0], 0.05, 0.01).verdict == "AMBIGUOUS"


def test_ratio_and_interval_are_reported():
    v = timing_verdict("c", [1.0] * 10, [1.5] * 10, 0.05, 0.01)
    assert v.ratio == pytest.approx(1.5) and (v.ci_low, v.ci_high) == (pytest.approx(1.5), pytest.approx(1.5))
    assert v.verdict == "SLOW" and v.baseline == 1.0 and v.candidate == 1.5 and v.n_baseline == 10


def test_every_round_must_agree_for_slow():
    # round 0: candidate 30% slower; round 1: candidate 10% faster. Pooled it looks slower, but the
    # rounds disagree, so the verdict is AMBIGUOUS, never SLOW.
    base = noisy(1.0, 30, seed=1) + noisy(2.0, 30, seed=2)
    cand = noisy(1.3, 30, seed=3) + noisy(1.8, 30, seed=4)
    groups = [0] * 30 + [1] * 30
    assert compare.round_ratios(base, cand, groups, groups) == [pytest.approx(1.3, rel=0.02),
                                                                pytest.approx(0.9, rel=0.02)]
    v = timing_verdict("c", base, cand, 0.05, 0.01, base_groups=groups, cand_groups=groups)
    assert v.verdict == "AMBIGUOUS" and "round ratios" in v.note
    cand = noisy(1.3, 30, seed=3) + noisy(2.6, 30, seed=4)
    assert timing_verdict("c", base, cand, 0.05, 0.01, base_groups=groups, cand_groups=groups).verdict == "SLOW"


def test_counters_compared_exactly():
    b = [run_record(), case_record("a", noisy(1.0))]
    c = [run_record(), case_record("a", noisy(1.0, seed=5), loads=(4, 4), flops=1000.0000001)]
    verdicts = {v.metric: v for v in compare_runs(b, c)}
    assert verdicts["latency_s"].verdict == "SAME"
    assert verdicts["flops"].verdict == "CHANGED" and verdicts["loads"].verdict == "CHANGED"
    assert verdicts["params"].verdict == "EQUAL"
    assert "capacity" not in verdicts  # None on both sides: not a counter of this case
    assert compare.gate_failed(list(verdicts.values()))
    # another seed: counters are not expected to match and are not compared
    c = [run_record(), case_record("a", noisy(1.0, seed=5), seed=1, loads=(4, 4))]
    assert [v.metric for v in compare_runs(b, c)] == ["latency_s"]


def test_failed_and_missing_cases_fail_and_a_new_case_is_informational():
    b = [run_record(), case_record("a", noisy(1.0)), case_record("b", noisy(1.0)), case_record("gone", noisy(1.0))]
    c = [run_record(), case_record("a", [], status="error"), case_record("b", noisy(1.0)),
         case_record("new", noisy(1.0))]
    verdicts = compare_runs(b, c)
    assert [(v.case_id, v.verdict) for v in verdicts if v.metric in ("status", "latency_s")] == \
        [("a", "FAILED"), ("b", "SAME"), ("gone", "MISSING"), ("new", "NEW")]
    assert sorted({v.case_id for v in verdicts if v.fails}) == ["a", "gone"]
    assert compare.summary_line(verdicts).endswith("failing cases: a, gone")
    # without the failure and the missing case, the new case alone does not fail the gate
    assert not compare.gate_failed(compare_runs([b[0], b[2]], [c[0], c[2], c[3]]))


@pytest.mark.parametrize("change,message", [
    ({"suite": "quick"}, "suite"),
    ({"device": "cuda"}, "device"),
])
def test_not_comparable_runs(change, message):
    b = [run_record(), case_record("a", noisy(1.0))]
    c = [run_record(**change), case_record("a", noisy(1.0))]
    with pytest.raises(NotComparable, match=message):
        compare_runs(b, c)


def test_not_comparable_dtype_and_schema():
    b = [run_record(), case_record("a", noisy(1.0))]
    with pytest.raises(NotComparable, match="dtype"):
        compare_runs(b, [run_record(), case_record("a", noisy(1.0), dtype="bfloat16")])
    with pytest.raises(NotComparable, match="schema"):
        compare_runs(b, [{**run_record(), "schema": 2}, case_record("a", noisy(1.0))])


def test_markdown_escapes_and_json_round_trips():
    b = [run_record(), case_record("x|<script>", noisy(1.0))]
    c = [run_record(), case_record("x|<script>", noisy(1.3, seed=4))]
    verdicts = compare_runs(b, c)
    md = compare.format_markdown(verdicts, 0.05, 0.01)
    assert "<script>" not in md and "x\\|&lt;script&gt;" in md and "SLOW" in md
    data = json.loads(compare.format_json(verdicts, 0.05, 0.01))
    assert data["failed"] is True and data["verdicts"][0]["verdict"] == "SLOW"
    assert "FAIL" in compare.format_table(verdicts)


def write(path, records):
    writer = ResultWriter(path)
    for r in records:
        writer.append({k: v for k, v in r.items() if k != "schema"})
    return str(path)


def test_cli_exit_codes(tmp_path):
    base = write(tmp_path / "b.jsonl", [run_record(), case_record("a", noisy(1.0))])
    same = write(tmp_path / "s.jsonl", [run_record(), case_record("a", noisy(1.0, seed=7))])
    slow = write(tmp_path / "w.jsonl", [run_record(), case_record("a", noisy(1.2, seed=7))])
    other = write(tmp_path / "o.jsonl", [run_record(suite="quick"), case_record("a", noisy(1.0))])
    runner = CliRunner()
    result = runner.invoke(cli, ["compare", base, same])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["compare", base, slow, "--format", "markdown"])
    assert result.exit_code == 1 and "| <code>a</code> | latency_s | :red_circle: SLOW" in result.output
    result = runner.invoke(cli, ["compare", base, other])
    assert result.exit_code == 2 and "suite" in result.output
    result = runner.invoke(cli, ["compare", base])
    assert result.exit_code == 2
    result = runner.invoke(cli, ["compare", base, str(tmp_path / "missing.jsonl")])
    assert result.exit_code == 2 and "no such results file" in result.output
    result = runner.invoke(cli, ["compare", base, slow, "--format", "json", "--threshold", "0.5"])
    assert result.exit_code == 0 and json.loads(result.output)["verdicts"][0]["verdict"] == "SAME"


def test_auto_judges_cpu_time_when_both_runs_have_it():
    b = case_record("a", noisy(1.0))
    b["samples"]["cpu_s"] = noisy(0.5, seed=3)
    c = case_record("a", noisy(1.0, seed=9))
    c["samples"]["cpu_s"] = noisy(0.7, seed=4)
    verdicts = compare_runs([run_record(), b], [run_record(), c])
    assert (verdicts[0].metric, verdicts[0].verdict) == ("cpu_s", "SLOW")
    assert compare_runs([run_record(), b], [run_record(), c], metric="latency_s")[0].verdict == "SAME"
    wall_only = case_record("a", noisy(1.0, seed=9))
    assert compare_runs([run_record(), b], [run_record(), wall_only])[0].metric == "latency_s"


# --- missing evidence is never a pass -------------------------------------------------------------

def test_cli_candidate_that_crashed_half_way_fails_with_missing_cases(tmp_path):
    cases = [case_record(name, noisy(1.0, seed=i)) for i, name in enumerate("abcd")]
    base = write(tmp_path / "b.jsonl", [run_record(), *cases])
    half = write(tmp_path / "h.jsonl", [run_record(), *cases[:2]])
    result = CliRunner().invoke(cli, ["compare", base, half])
    assert result.exit_code == 1, result.output
    assert "FAIL:" in result.output and "2 MISSING" in result.output and "failing cases: c, d" in result.output


@pytest.mark.parametrize("candidate_cases", [
    pytest.param([], id="no case record at all"),
    pytest.param([case_record("z", noisy(1.0))], id="only cases the baseline lacks"),
])
def test_cli_candidate_with_no_comparable_case_fails(tmp_path, candidate_cases):
    base = write(tmp_path / "b.jsonl", [run_record(), case_record("a", noisy(1.0))])
    cand = write(tmp_path / "c.jsonl", [run_record(), *candidate_cases])
    result = CliRunner().invoke(cli, ["compare", base, cand, "--format", "json"])
    assert result.exit_code == 1, result.output
    data = json.loads(result.output)
    assert data["failed"] is True and ("a", "MISSING") in [(v["case_id"], v["verdict"]) for v in data["verdicts"]]


def test_cli_no_case_compared_on_timing_is_not_a_pass(tmp_path):
    # every case finished, but with one sample a side nothing can be judged: AMBIGUOUS everywhere
    base = write(tmp_path / "b.jsonl", [run_record(), case_record("a", [1.0]), case_record("b", [2.0])])
    cand = write(tmp_path / "c.jsonl", [run_record(), case_record("a", [1.0]), case_record("b", [2.0])])
    result = CliRunner().invoke(cli, ["compare", base, cand])
    assert result.exit_code == 1, result.output
    assert "FAIL: 2 AMBIGUOUS" in result.output and "no case was compared on timing" in result.output
    assert compare.gate_failed([])


def test_cli_baseline_with_only_failed_cases_is_not_comparable(tmp_path):
    base = write(tmp_path / "b.jsonl", [run_record(), case_record("a", [], status="error"),
                                        case_record("b", [], status="timeout")])
    cand = write(tmp_path / "c.jsonl", [run_record(), case_record("a", noisy(1.0)), case_record("b", noisy(1.0))])
    result = CliRunner().invoke(cli, ["compare", base, cand])
    assert result.exit_code == 2, result.output
    assert "not comparable: the baseline has no finished case" in result.output and "PASS" not in result.output


# --- records compare cannot use: exit 2 naming FILE:LINE --------------------------------------------

def _without(record, *path):
    record = json.loads(json.dumps(record))
    parent = record
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    return record


def _with(record, **fields):
    return {**record, **fields}


GOOD_B = case_record("b", noisy(1.0, seed=3))

BAD_LINES = {
    "all-zero samples": json.dumps(case_record("b", [0.0] * 5)),
    "a JSON array where a record belongs": json.dumps([GOOD_B]),
    "a JSON string where a record belongs": json.dumps("case"),
    "no status": json.dumps(_without(GOOD_B, "status")),
    "an unknown status": json.dumps(_with(GOOD_B, status="okay")),
    "no case_id": json.dumps(_without(GOOD_B, "case_id")),
    "an ok case without samples": json.dumps(_without(GOOD_B, "samples")),
    "an ok case without latency samples": json.dumps(_without(GOOD_B, "samples", "latency_s")),
    "metrics not an object": json.dumps(_with(GOOD_B, metrics=[1, 2])),
    "a NaN sample": json.dumps(case_record("b", [0.001, float("nan"), 0.001])),
    "a negative sample": json.dumps(case_record("b", [0.001, -0.001, 0.001])),
    "a boolean sample": json.dumps(case_record("b", [True, True, True])),
    "an implementation that is not a string": json.dumps(_with(GOOD_B, code={"experts": 3})),
    "a run record whose options are not an object": json.dumps(_with(run_record(), options=["cpu"])),
    "bytes that are not UTF-8": b'{"schema": 1, "type": "case", "case_id": "b\xff"}'.decode("latin-1"),
    "nesting too deep to parse": "[" * 100_000 + "]" * 100_000,
}


@pytest.mark.parametrize("bad_line", BAD_LINES.values(), ids=BAD_LINES.keys())
def test_cli_malformed_record_exits_2_naming_file_and_line(tmp_path, bad_line):
    base = write(tmp_path / "b.jsonl", [run_record(), case_record("a", noisy(1.0)), GOOD_B])
    cand = tmp_path / "c.jsonl"
    good = [json.dumps(run_record()), json.dumps(case_record("a", noisy(1.0, seed=1)))]
    cand.write_bytes("\n".join([*good, bad_line, ""]).encode("latin-1" if "\xff" in bad_line else "utf-8"))
    result = CliRunner().invoke(cli, ["compare", base, str(cand)])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), "a traceback, not a message"  # not a crash
    assert f"{cand}:3: " in result.output, result.output


def test_cli_a_pipe_named_as_a_results_file_is_refused_not_read_forever(tmp_path):
    base = write(tmp_path / "b.jsonl", [run_record(), case_record("a", noisy(1.0))])
    pipe = tmp_path / "pipe.jsonl"
    os.mkfifo(pipe)
    proc = subprocess.run([sys.executable, "-m", "moebench.cli", "compare", base, str(pipe)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and f"{pipe}: not a regular file" in proc.stderr, proc.stderr


def test_load_run_skips_a_torn_last_line_and_keeps_the_last_record_of_a_case(tmp_path):
    # behaviour kept from before: a kill mid-write cuts the last line; a retried case's later record counts
    path = tmp_path / "r.jsonl"
    lines = [run_record(), case_record("a", [], status="crashed"), case_record("a", noisy(1.0))]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + json.dumps(case_record("b", noisy(1.0)))[:50])
    records = compare.load_run(path)
    assert [r.get("case_id") for r in records] == [None, "a", "a"]
    assert latest_case_records(records)["a"]["status"] == "ok"


# --- the code that ran ----------------------------------------------------------------------------

def with_code(record, **code):
    return {**record, "code": code}


def test_a_change_of_code_is_changed_not_slow_or_fast():
    b = [run_record(), with_code(case_record("peer", noisy(1.0)), candidate_topk="native_c", gather_experts="native_c")]
    for speed in (1.3, 0.7, 1.0):
        c = [run_record(), with_code(case_record("peer", noisy(speed, seed=2)), candidate_topk="torch",
                                     gather_experts="native_c", experts="onednn")]
        verdict = compare_runs(b, c)[0]
        assert (verdict.metric, verdict.verdict) == ("code", "CHANGED"), speed
        assert verdict.note.startswith("code differs: candidate_topk: native_c -> torch, experts: (none) -> onednn")
        assert "gather_experts" not in verdict.note and verdict.ratio == pytest.approx(speed, rel=0.05)
        assert compare.gate_failed(compare_runs(b, c))
    # the same code: timing is judged as always, with no note about code
    same = [run_record(), with_code(case_record("peer", noisy(1.3, seed=2)), candidate_topk="native_c",
                                    gather_experts="native_c")]
    verdict = compare_runs(b, same)[0]
    assert (verdict.metric, verdict.verdict, verdict.note) == ("latency_s", "SLOW", "")


@pytest.mark.parametrize("side", ["baseline", "candidate"])
def test_a_record_without_code_is_timed_as_before_with_a_note(side):
    coded = with_code(case_record("a", noisy(1.0)), experts="torch")
    plain = case_record("a", noisy(1.3, seed=2))
    b, c = (case_record("a", noisy(1.0)), with_code(plain, experts="torch")) if side == "baseline" else (coded, plain)
    verdict = compare_runs([run_record(), b], [run_record(), c])[0]
    assert (verdict.metric, verdict.verdict) == ("latency_s", "SLOW")
    assert verdict.note == f"code not recorded in the {side}"


def test_cli_code_change_fails_the_gate_in_every_format(tmp_path):
    base = write(tmp_path / "b.jsonl", [run_record(), with_code(case_record("a", noisy(1.0)), experts="onednn")])
    cand = write(tmp_path / "c.jsonl", [run_record(), with_code(case_record("a", noisy(0.5)), experts="torch")])
    runner = CliRunner()
    data = json.loads(runner.invoke(cli, ["compare", base, cand, "--format", "json"]).output)
    assert data["failed"] and [(v["metric"], v["verdict"]) for v in data["verdicts"]][0] == ("code", "CHANGED")
    table = runner.invoke(cli, ["compare", base, cand])
    assert table.exit_code == 1 and "FAST" not in table.output
    assert "CHANGED" in table.output and "code differs: experts: onednn -> torch" in table.output
    markdown = runner.invoke(cli, ["compare", base, cand, "--format", "markdown"])
    assert markdown.exit_code == 1 and ":red_circle: CHANGED" in markdown.output and "FAST" not in markdown.output


# --- markdown shows hostile case ids as they are --------------------------------------------------

HOSTILE_IDS = ["x|y", "*bold* _it_ **b** __u__", "`code` ``two``", "[link](http://e.com) ![img](x.png)",
               "two\nlines\r\nthree", "<img src=x onerror=alert(1)>", "<b>bold</b>", "&lt;b&gt; &amp; &#124;",
               "~~strike~~", "@octocat #12 :smile:", "back\\slash\\*", "rtl\u202eevil", "# heading", "> quote",
               "- item", "1. item", "a\\|b", "<http://autolink.example>", "\x1b[31mred"]


class _TableBody(html.parser.HTMLParser):
    """The body rows of rendered HTML tables, each a list of cells: the cell's text and the tags inside it."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.rows, self.cell = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag == "td":
            self.cell = {"text": "", "tags": []}
        elif self.cell is not None:
            self.cell["tags"].append(tag)

    def handle_endtag(self, tag):
        if tag == "td":
            self.rows[-1].append(self.cell)
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell["text"] += data


def test_markdown_shows_hostile_case_ids_as_they_are():
    from markdown_it import MarkdownIt  # a CommonMark renderer with GitHub's tables and strikethrough

    b = [run_record(), *(case_record(i, noisy(1.0)) for i in HOSTILE_IDS)]
    c = [run_record(), *(case_record(i, noisy(1.3, seed=4)) for i in HOSTILE_IDS)]
    md = compare.format_markdown(compare_runs(b, c), 0.05, 0.01)
    rendered = MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(md)
    table = _TableBody()
    table.feed(rendered)
    first_cells = [row[0] for row in table.rows if row]  # the header row has th, not td
    # one row per case: a newline in an id did not split a row, a pipe did not split a cell
    assert len(first_cells) == len(HOSTILE_IDS), rendered
    for case_id, cell in zip(HOSTILE_IDS, first_cells, strict=True):
        shown = case_id.replace("\r", "\\r").replace("\n", "\\n").replace("\u202e", "\\u202e").replace("\x1b", "\\x1b")
        assert (cell["text"], cell["tags"]) == (shown, ["code"]), case_id
    assert "FAIL" in md.splitlines()[0] and not any(i in md.splitlines()[0] for i in ("octocat", "img"))
