"""The worker process: it never outlives its run, and the status of a case it ran is true.

Real runs (tests/live_run.py: `moebench run` in a session of its own) and real signals; nothing mocked.
"""

import contextlib
import os
import signal
import textwrap
import time
from pathlib import Path

import pytest
from live_run import MARKED_ENDLESS_SUITE, LiveRun

from moebench.runner import RunOptions, run_suite
from moebench.suite import load_suite
from moebench.worker import death_status, watchdog_margin


def test_the_worker_dies_with_its_parent_even_by_sigkill(tmp_path):
    with LiveRun(tmp_path, MARKED_ENDLESS_SUITE % 600) as run:
        run.wait_for_cases(1)  # the second case is in flight
        left = set(run.processes()) - {run.proc.pid}
        assert left, "the worker should be running"
        os.kill(run.proc.pid, signal.SIGKILL)  # no cleanup code of the runner can run
        run.proc.wait()
        assert run.wait_until_gone(left, within=5) == set(), f"left running: {run.processes()}"


def test_the_worker_ends_a_case_past_its_timeout_itself_while_the_runner_is_stopped(tmp_path):
    timeout = 4
    with LiveRun(tmp_path, MARKED_ENDLESS_SUITE % timeout) as run:
        run.wait_for_cases(1)
        time.sleep(0.5)  # for the runner to send the second case
        os.kill(run.proc.pid, signal.SIGSTOP)  # a runner that can no longer enforce any timeout
        worker = run.worker_pid()
        try:
            assert run.wait_until_gone({worker}, within=timeout + watchdog_margin(timeout) + 5) == set()
        finally:
            os.kill(run.proc.pid, signal.SIGCONT)
        code, _, err = run.finish()
        records = run.case_records()
    assert code == 1, err
    assert records[1]["status"] == "timeout"
    assert f"timeout of {timeout} s" in records[1]["error"] and "worker's own timer" in records[1]["error"]


def test_a_worker_killed_by_sigkill_outside_the_oom_killer_is_crashed_not_oom(tmp_path):
    with LiveRun(tmp_path, MARKED_ENDLESS_SUITE % 600) as run:
        run.wait_for_cases(1)
        os.kill(run.worker_pid(), signal.SIGKILL)
        code, _, err = run.finish()
        records = run.case_records()
    assert code == 1, err
    assert records[1]["status"] == "crashed"
    assert "killed by SIGKILL" in records[1]["error"]


def test_a_cpu_allocation_the_machine_cannot_make_is_oom(tmp_path):
    """E*F*D = 2^48 float32 weights per expert matrix, 1 PiB: more than any machine's memory and more
    than the 128 TiB of a process's address space, so the allocation fails at once whatever the
    kernel's overcommit policy, rather than waking the OOM killer."""
    path = tmp_path / "huge.yaml"
    path.write_text(textwrap.dedent("""
        base: {d_model: 64, d_ff: 1099511627776, n_experts: 4, top_k: 2}
        workload: {tokens: 4}
        measure: {warmup: 1, min_samples: 3, max_samples: 3, phases: false, memory: false, ceiling: false}
    """))
    summary = run_suite(load_suite(str(path)), RunOptions(out_dir=tmp_path / "out", show_progress=False))
    (record,) = summary.records
    assert record["status"] == "oom", record["error"]
    assert "can't allocate memory" in record["error"]


@pytest.mark.parametrize("exitcode, oom_killed, status, words", [
    (-signal.SIGKILL, True, "oom", "out-of-memory killer"),
    (-signal.SIGKILL, False, "crashed", "not the kernel OOM killer"),
    (-signal.SIGKILL, None, "crashed", "cannot tell"),
    (-signal.SIGSEGV, False, "crashed", "signal SIGSEGV"),
    (3, False, "crashed", "exited with code 3"),
    (-40, False, "crashed", "died from signal 40"),
    (-signal.SIGALRM, False, "timeout", "timeout of 2 s"),
])
def test_each_death_of_a_worker_gets_a_status_and_a_message_naming_it(exitcode, oom_killed, status, words):
    assert death_status(exitcode, 2.0, oom_killed, "its memory cgroup /x")[0] == status
    assert words in death_status(exitcode, 2.0, oom_killed, "its memory cgroup /x")[1]


@contextlib.contextmanager
def memory_limited_cgroup(limit_bytes: int):
    """A child of this process's memory cgroup (v1, or v2 where delegated) with a memory limit, so the
    kernel's OOM killer acts inside it only; the test is skipped where this process may not make one."""
    lines = [line.split(":", 2) for line in Path("/proc/self/cgroup").read_text().splitlines()]
    v1 = [path for _, controllers, path in lines if "memory" in controllers.split(",")]
    if v1:
        parent, limit_file = Path("/sys/fs/cgroup/memory", v1[0].lstrip("/")), "memory.limit_in_bytes"
    else:
        parent, limit_file = Path("/sys/fs/cgroup", lines[0][2].lstrip("/")), "memory.max"
    group = parent / f"moebench-test-{os.getpid()}"
    try:
        group.mkdir()
        (group / limit_file).write_text(str(limit_bytes))
    except OSError as err:
        if group.exists():
            group.rmdir()
        pytest.skip(f"no memory-limited cgroup can be made here: {err}")
    try:
        yield group
    finally:
        deadline = time.monotonic() + 10
        while group.exists():
            try:
                group.rmdir()
            except OSError:  # its last processes are still leaving
                assert time.monotonic() < deadline, f"cgroup {group} still busy"
                time.sleep(0.1)


def test_the_kernel_oom_killer_ending_the_worker_is_oom_and_says_how_moebench_knows(tmp_path):
    """A case whose weights (3.2 GB) exceed its cgroup's limit (1.5 GB): the kernel's OOM killer, not
    torch, ends it, inside that cgroup only."""
    suite = """
        base: {d_model: 1024, d_ff: 4096, n_experts: 64, top_k: 2}
        workload: {tokens: 4}
        measure: {warmup: 1, min_samples: 1, max_samples: 1, phases: false, memory: false, ceiling: false}
    """
    with memory_limited_cgroup(1536 * 2**20) as group:
        with LiveRun(tmp_path, suite) as run:
            (group / "cgroup.procs").write_text(str(run.proc.pid))  # long before it starts its worker
            code, _, err = run.finish(within=120)
            records = run.case_records()
    assert code == 1, err
    (record,) = records
    assert record["status"] == "oom", record["error"]
    assert "out-of-memory killer" in record["error"] and "oom_kill counter of its memory cgroup" in record["error"]
    assert group.name in record["error"]


def test_a_stop_that_cuts_the_workers_start_short_is_cleaned_up_without_an_error(monkeypatch):
    """A stop signal can land inside multiprocessing's start(), before the process exists; closing the
    worker then must not raise (it raised 'can only join a started process', a traceback, exit 1)."""
    import multiprocessing.context

    from moebench.worker import Worker

    def interrupted_start(self):
        raise KeyboardInterrupt  # where RunStopped would come from

    monkeypatch.setattr(multiprocessing.context.SpawnProcess, "start", interrupted_start)
    worker = Worker("cpu", 1)
    with pytest.raises(KeyboardInterrupt):
        worker._start()
    worker.close()
    assert worker.process is None and worker.conn is None
