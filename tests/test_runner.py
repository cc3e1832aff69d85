"""The runner end to end: real cases in a worker process, failures recorded, kill + resume."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from live_run import MARKED_ENDLESS_SUITE, LiveRun

from moebench.runner import EnvironmentProblem, RunOptions, check_device, run_suite
from moebench.store import load_results, read_records
from moebench.suite import load_suite

FAST = """
    base: {d_model: 16, d_ff: 32, n_experts: 4, top_k: 2}
    workload: {tokens: 16}
    measure: {warmup: 1, min_samples: 3, max_samples: 3, budget_s: 0.05, phases: %s, memory: false,
              ceiling: false, timeout_s: %s}
"""


def write_suite(tmp_path, grid, phases="false", timeout=60):
    path = tmp_path / "tiny.yaml"
    path.write_text(textwrap.dedent(FAST % (phases, timeout)) + textwrap.dedent(grid))
    return path


def test_every_case_runs_and_a_failing_case_does_not_stop_the_suite(tmp_path):
    path = write_suite(tmp_path, """
        zip:
          - {variant: token_choice, backend: sort_gather}
          - {variant: hash, routing: zipf}
          - {variant: expert_choice}
    """, phases="true")
    summary = run_suite(load_suite(str(path)), RunOptions(out_dir=tmp_path / "out", show_progress=False))
    status = {r["case_id"]: r["status"] for r in summary.records}
    assert status == {"variant=token_choice,backend=sort_gather": "ok", "variant=hash,routing=zipf": "error",
                      "variant=expert_choice": "ok"}
    failed = summary.failed[0]
    assert "no top-k selection to force" in failed["error"]
    frame = load_results(summary.path)
    ok = frame[frame.status == "ok"]
    assert (ok["latency_s"] > 0).all() and (ok["tokens_per_s"] > 0).all()
    assert ok["samples"].map(len).eq(3).all()  # raw samples kept
    assert ok["routing_frac"].between(0, 1).all()
    run = next(r for r in read_records(summary.path) if r["type"] == "run")
    assert run["options"]["threads"] >= 1 and "environment" in run


def test_a_case_past_its_timeout_is_recorded_and_the_worker_replaced(tmp_path):
    suite = load_suite(str(write_suite(tmp_path, "grid: {backend: [loop, sort_gather]}\n")))
    endless = dataclasses.replace(suite.cases[0].measure, min_samples=10**6, max_samples=10**6, budget_s=1e6,
                                  timeout_s=1.5)
    cases = [dataclasses.replace(suite.cases[0], measure=endless), suite.cases[1]]
    summary = run_suite(dataclasses.replace(suite, cases=cases),
                        RunOptions(out_dir=tmp_path / "out", show_progress=False))
    assert [r["status"] for r in summary.records] == ["timeout", "ok"]
    assert "timeout of 1.5 s" in summary.records[0]["error"]


def test_cuda_without_cuda_is_an_environment_problem():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(EnvironmentProblem, match="CUDA is not available"):
        check_device("cuda")


def test_sigkill_then_resume_records_every_case_exactly_once(tmp_path):
    # 300 samples per case make each case last a few tenths of a second, so the kill lands part-way.
    path = write_suite(tmp_path, "grid: {tokens: [8, 16, 24, 32, 40, 48, 56, 64]}\n")
    path.write_text(path.read_text().replace("min_samples: 3, max_samples: 3", "min_samples: 300, max_samples: 300"))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "moebench.cli", "run", str(path), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        files = list(out.glob("tiny-*.jsonl")) if out.exists() else []
        done = sum(1 for r in read_records(files[0]) if r["type"] == "case") if files else 0
        if done >= 2:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the runner and its worker, mid-run
    proc.wait()
    (results,) = out.glob("tiny-*.jsonl")
    before = [r["case_id"] for r in read_records(results) if r["type"] == "case"]
    assert 2 <= len(before) < 8, "the kill should land part-way through the suite"
    subprocess.run(cmd + ["--resume"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = [r["case_id"] for r in read_records(results) if r["type"] == "case"]
    assert sorted(after) == sorted(f"tokens={t}" for t in range(8, 65, 8))
    assert after[:len(before)] == before
    assert all(r["status"] == "ok" for r in read_records(results) if r["type"] == "case")
    assert json.loads(results.read_text().splitlines()[0])["type"] == "run"


@pytest.mark.parametrize("sig, to_group, code", [(signal.SIGINT, True, 130), (signal.SIGTERM, False, 143)])
def test_sigint_and_sigterm_stop_the_run_cleanly(tmp_path, sig, to_group, code):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) or SIGTERM to the runner alone
    (as `kill` sends it), while a case is in flight: a one-line message, no traceback, the finished
    records intact, and no process or temporary file left behind."""
    with LiveRun(tmp_path, MARKED_ENDLESS_SUITE % 600) as run:
        run.wait_for_cases(1)
        time.sleep(0.5)  # for the second case to be under way
        os.killpg(run.session, sig) if to_group else os.kill(run.proc.pid, sig)
        returncode, _, err = run.finish()
        left = run.wait_until_gone(run.processes(), within=5)
        leftovers = list(run.tmpdir.iterdir())
        results = run.results()
    assert returncode == code, err
    assert "Traceback" not in err
    message = err.strip().splitlines()[-1]
    assert f"stopped by {sig.name}: 1 of 2 cases are recorded in {results}" in message and "--resume" in message
    lines = results.read_text().splitlines(keepends=True)
    assert [json.loads(line)["type"] for line in lines] == ["run", "case"] and lines[-1].endswith("\n")
    assert left == set(), f"left running: {run.processes()}"
    assert leftovers == []


def test_a_run_that_ends_before_its_first_record_leaves_no_file_and_no_lock(tmp_path, monkeypatch):
    """Whatever ends a run between creating its file and writing the run record (a stop signal, a full
    disk, a bug) leaves no empty file that report, compare and --resume would trip over."""
    import moebench.runner

    suite = load_suite(str(write_suite(tmp_path, "grid: {tokens: [8]}\n")))
    out = tmp_path / "out"

    def stopped(self, record):
        raise KeyboardInterrupt  # as a signal would, before the first record is written

    monkeypatch.setattr(moebench.runner.ResultWriter, "append", stopped)
    with pytest.raises(KeyboardInterrupt):
        run_suite(suite, RunOptions(out_dir=out, show_progress=False))
    assert list(out.iterdir()) == []
    monkeypatch.undo()
    summary = run_suite(suite, RunOptions(out_dir=out, show_progress=False))  # no lock was left held
    assert [r["status"] for r in summary.records] == ["ok"]


def test_a_stopped_run_counts_only_its_own_cases_as_recorded(tmp_path):
    from moebench.runner import settle_results

    path = write_suite(tmp_path, "grid: {tokens: [8, 16]}\n")
    summary = run_suite(load_suite(str(path)), RunOptions(out_dir=tmp_path / "out", show_progress=False))
    assert settle_results(summary.path, ["tokens=8", "tokens=16"]) == 2
    assert settle_results(summary.path, ["tokens=16"]) == 1  # a --resume --filter selected one of them
