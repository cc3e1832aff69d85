"""abtest.py: interleaving and merging with a fake side runner, the other revision really imported
from its worktree, and one real A/A run of HEAD against the working tree."""

import subprocess
import sys
from pathlib import Path

import pytest

from moebench import abtest, compare
from moebench.abtest import ABError, Side, interleave, merge_rounds, rounds_order

REPO = Path(__file__).resolve().parent.parent


def fake_records(side: str, r: int, status: str = "ok") -> list[dict]:
    offset = 1.0 if side == "baseline" else 2.0
    return [{"type": "run", "suite": "ci", "options": {"device": "cpu"}, "round_of": r},
            {"type": "case", "case_id": "a", "status": status, "error": None if status == "ok" else "boom",
             "metrics": {"latency_s": offset + r, "flops": 7.0}, "samples": {"latency_s": [offset + r] * 3}},
            {"type": "case", "case_id": "b", "status": "ok", "error": None,
             "metrics": {"latency_s": 5.0}, "samples": {"latency_s": [5.0, 6.0]}}]


def test_rounds_alternate_which_side_goes_first():
    assert rounds_order(3) == [(0, "baseline"), (0, "candidate"), (1, "candidate"), (1, "baseline"),
                               (2, "baseline"), (2, "candidate")]
    with pytest.raises(ValueError, match="rounds"):
        interleave(Side("baseline", REPO, None), Side("candidate", REPO, None), lambda s, r: [], 0)


def test_interleave_calls_the_runner_in_order_and_groups_by_side():
    calls = []

    def runner(side, r):
        calls.append((r, side.name))
        return fake_records(side.name, r)

    base, cand = interleave(Side("baseline", REPO, None), Side("candidate", REPO, None), runner, 2)
    assert calls == rounds_order(2)
    assert [runs[0]["round_of"] for runs in base] == [0, 1]
    assert [runs[0]["round_of"] for runs in cand] == [0, 1]


def test_merge_concatenates_samples_with_round_labels():
    merged = merge_rounds([fake_records("baseline", 0), fake_records("baseline", 1)])
    run, a, b = merged
    assert run["rounds"] == 2 and run["round_of"] == 0
    assert a["samples"] == {"latency_s": [1.0, 1.0, 1.0, 2.0, 2.0, 2.0], "round": [0, 0, 0, 1, 1, 1]}
    assert a["metrics"]["latency_s"] == 1.5 and a["metrics"]["flops"] == 7.0
    assert a["round_medians"] == [1.0, 2.0]
    assert b["samples"]["round"] == [0, 0, 1, 1] and b["metrics"]["latency_s"] == 5.5


def test_merge_keeps_every_per_step_series():
    rounds = [fake_records("baseline", r) for r in range(2)]
    for r, records in enumerate(rounds):
        records[1]["samples"]["cpu_s"] = [0.1 * (r + 1)] * 3
    a = merge_rounds(rounds)[1]
    assert a["samples"]["cpu_s"] == [0.1, 0.1, 0.1, 0.2, 0.2, 0.2]
    assert len(a["samples"]["round"]) == len(a["samples"]["cpu_s"])


def test_a_failure_in_any_round_is_a_failure():
    merged = merge_rounds([fake_records("candidate", 0), fake_records("candidate", 1, status="error")])
    assert merged[1]["status"] == "error" and merged[1]["error"].startswith("round 1")


def test_a_case_absent_from_a_round_is_a_failure_not_fewer_rounds():
    # round 1 of the candidate stopped before case a (its run crashed): a is not judged on round 0 alone
    cand_rounds = [fake_records("candidate", 0), [r for r in fake_records("candidate", 1) if r.get("case_id") != "a"]]
    merged = merge_rounds(cand_rounds)
    assert merged[1]["status"] == "crashed" and merged[1]["error"].startswith("round 1: no record")
    assert merged[2]["status"] == "ok"
    base = merge_rounds([fake_records("baseline", r) for r in range(2)])
    verdicts = {v.case_id: v.verdict for v in compare.compare_runs(base, merged) if v.metric in ("status", "latency_s")}
    assert verdicts == {"a": "FAILED", "b": "SAME"}


def test_merged_rounds_feed_compare():
    base = merge_rounds([fake_records("baseline", r) for r in range(2)])
    cand = merge_rounds([fake_records("candidate", r) for r in range(2)])
    verdicts = {(v.case_id, v.metric): v for v in compare.compare_runs(base, cand)}
    # case a: candidate medians 2, 3 against 1, 2 -> round ratios 2.0 and 1.5
    assert verdicts[("a", "latency_s")].note.startswith("round ratios 2.00 1.50")
    assert verdicts[("b", "latency_s")].verdict == "SAME"
    assert verdicts[("a", "flops")].verdict == "EQUAL"


def test_side_env_puts_the_tree_first_and_strips_the_testing_hook(monkeypatch):
    monkeypatch.setenv(abtest.INJECT_ENV, "0.5")
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    env = abtest.side_env(Side("baseline", Path("/tree"), None))
    assert env["PYTHONPATH"].split(":")[0] == "/tree" and "/elsewhere" in env["PYTHONPATH"]
    assert abtest.INJECT_ENV not in env
    env = abtest.side_env(Side("candidate", Path("/tree"), None, {abtest.INJECT_ENV: "0.15"}))
    assert env[abtest.INJECT_ENV] == "0.15"


def test_check_side_refuses_the_wrong_checkout():
    side = Side("baseline", REPO, "a" * 40)
    with pytest.raises(ABError, match="expected"):
        abtest.check_side(side, [{"type": "run", "environment": {"git": {"sha": "b" * 40}}}])
    abtest.check_side(side, [{"type": "run", "environment": {"git": {"sha": "a" * 40}}}])


def test_unknown_revision_is_refused():
    with pytest.raises(ABError, match="not a commit"):
        abtest.resolve_rev(REPO, "no-such-rev-xyz")


def test_the_baseline_process_imports_the_worktree():
    sha = abtest.resolve_rev(REPO, "HEAD")
    with abtest.worktree(REPO, sha) as tree:
        env = abtest.side_env(Side("baseline", tree, sha))
        out = subprocess.run([sys.executable, "-c", "import moebench; print(moebench.__file__)"], cwd=tree,
                             env=env, capture_output=True, text=True, check=True).stdout.strip()
        assert Path(out).resolve() == (tree / "moebench" / "__init__.py").resolve()
    assert not tree.exists()  # removed afterwards


TINY_SUITE = """
description: "tiny A/A suite for the abtest end-to-end test"
kind: ci
base: {d_model: 32, d_ff: 64, n_experts: 4, top_k: 2, variant: token_choice, backend: sort_gather}
workload: {tokens: 64, routing: uniform, seed: 0}
measure: {warmup: 1, min_samples: 12, max_samples: 12, budget_s: 0.5, memory: false, ceiling: false, phases: false}
"""


@pytest.mark.slow
def test_real_aa_run_against_head_is_not_slow(tmp_path):
    suite = tmp_path / "tiny.yaml"
    suite.write_text(TINY_SUITE)
    sha = abtest.resolve_rev(REPO, "HEAD")  # resolved once: HEAD may move while the test runs
    result = abtest.run_ab(REPO, sha, suite, tmp_path / "ab", rounds=1, threads=1)
    assert result.baseline_path.exists() and result.candidate_path.exists()
    # the baseline's run record names the commit it imported (check_side already refused otherwise)
    assert result.baseline[0]["environment"]["git"]["sha"] == sha
    # A/A: a plumbing test, not a noise test (scripts/gate_quality.py measures that), so a generous
    # threshold; the counters must match exactly whatever the machine does
    verdicts = compare.compare_runs(result.baseline, result.candidate, threshold=1.0)
    assert {v.verdict for v in verdicts if v.metric == "latency_s"} <= {"SAME", "FAST", "AMBIGUOUS"}
    assert not [v for v in verdicts if v.verdict == "CHANGED"], verdicts


def test_a_step_whose_code_differed_between_rounds_is_never_taken_for_one_rounds_code():
    rounds = [fake_records("candidate", r) for r in range(3)]
    for r, impl in enumerate(["native_c", "torch", "native_c"]):
        for rec in rounds[r]:
            if rec.get("type") == "case":
                rec["code"] = {"sort": impl, "experts": "onednn"}
    merged = merge_rounds(rounds)
    assert merged[1]["code"] == {"sort": "native_c|torch", "experts": "onednn"}
    base = merge_rounds([fake_records("baseline", r) for r in range(3)])
    for rec in base[1:]:
        rec["code"] = {"sort": "native_c", "experts": "onednn"}
    verdicts = {v.case_id: v.verdict for v in compare.compare_runs(base, merged) if v.metric == "code"}
    assert verdicts == {"a": "CHANGED", "b": "CHANGED"}
