"""A real `moebench run` in a session of its own, watched from outside: its processes, records and end.

The session (start_new_session) holds the runner and every process it starts, even once the runner has
died and they were adopted by another process, so a /proc scan of the session finds them all. The run
gets a TMPDIR of its own, so whatever temporary file it leaves behind can be found.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from moebench.store import read_records

# The first case fails at once, so its record marks the moment the worker is ready and the second case
# is in flight; the second never ends on its own (a sample count it never reaches), only by a timeout.
MARKED_ENDLESS_SUITE = """
    base: {d_model: 16, d_ff: 32, n_experts: 4, top_k: 2}
    workload: {tokens: 16}
    measure: {warmup: 1, min_samples: 1000000000, max_samples: 1000000000, budget_s: 1000000000,
              phases: false, memory: false, ceiling: false, timeout_s: %s}
    zip:
      - {variant: hash, routing: zipf}
      - {variant: token_choice}
"""


class LiveRun:
    def __init__(self, tmp_path: Path, suite_text: str):
        suite = tmp_path / "live.yaml"
        suite.write_text(textwrap.dedent(suite_text))
        self.out = tmp_path / "out"
        self.tmpdir = tmp_path / "tmp"
        self.tmpdir.mkdir()
        # The native kernels' compile cache stays the user's own (~/.cache/moebench/native unless
        # MOEBENCH_NATIVE_CACHE says otherwise), outside the run's TMPDIR: it is meant to outlive runs.
        env = {**os.environ, "TMPDIR": str(self.tmpdir)}
        self.proc = subprocess.Popen([sys.executable, "-m", "moebench.cli", "run", str(suite), "--out", str(self.out)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                     start_new_session=True)
        self.session = self.proc.pid

    def __enter__(self) -> LiveRun:
        return self

    def __exit__(self, *exc) -> None:
        """Whatever the test found, leave nothing running."""
        for pid in self.processes():
            for sig in (signal.SIGCONT, signal.SIGKILL):
                _signal(pid, sig)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()

    def results(self) -> Path | None:
        files = sorted(self.out.glob("live-*.jsonl")) if self.out.exists() else []
        return files[0] if files else None

    def case_records(self) -> list[dict]:
        path = self.results()
        return [r for r in read_records(path) if r["type"] == "case"] if path else []

    def wait_for_cases(self, n: int, within: float = 180) -> None:
        deadline = time.monotonic() + within
        while len(self.case_records()) < n:
            assert self.proc.poll() is None, f"the run ended early: {self.proc.communicate()}"
            assert time.monotonic() < deadline, f"no {n} case records within {within} s"
            time.sleep(0.05)

    def processes(self) -> dict[int, str]:
        """pid -> command line of every live (not zombie) process of the run's session."""
        found = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue  # it ended meanwhile
            state, _ppid, _pgrp, session = stat.rsplit(")", 1)[1].split()[:4]
            if int(session) == self.session and state != "Z":
                found[int(entry.name)] = cmdline
        return found

    def worker_pid(self) -> int:
        (pid,) = [pid for pid, cmd in self.processes().items() if "spawn_main" in cmd]
        return pid

    def wait_until_gone(self, pids, within: float) -> set[int]:
        """The pids still alive after `within` seconds (empty as soon as all are gone)."""
        deadline = time.monotonic() + within
        while (alive := set(pids) & set(self.processes())) and time.monotonic() < deadline:
            time.sleep(0.05)
        return alive

    def finish(self, within: float = 60) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=within)
        return self.proc.returncode, out, err


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
