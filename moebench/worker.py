"""The worker process that runs a suite's cases, and a true account of how each case ended.

The runner sends one case at a time over a pipe to a worker (started once, torch imported once) and
gets back a record. Nothing the worker does may outlive the run:
- it dies with its parent: a parent-death signal (Linux prctl PR_SET_PDEATHSIG), or elsewhere a
  thread that notices the parent is gone;
- it enforces its case's measure.timeout_s itself, with a kernel timer a margin after the parent's
  own limit, so a worker whose parent is stopped or stuck still ends;
- a worker with a case in flight when the run stops is killed and reaped, not waited for.

How a case ended is its status, each with a message saying what happened: ok; error (the case raised);
oom (torch or Python could not allocate, or the kernel's out-of-memory killer ended the worker);
timeout; crashed (any other death, with its signal or exit code named).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moebench.suite import Case

LONGEST_TIMER_S = 1e8  # about 3 years; setitimer refuses much longer times on some platforms
READY_TIMEOUT_S = 300  # the worker's imports (torch: seconds) never count against a case's timeout


class EnvironmentProblem(RuntimeError):
    """The machine cannot run what was asked (no CUDA for --device cuda, a worker that cannot start): exit 3."""


def watchdog_margin(timeout_s: float) -> float:
    """How long after the parent's limit the worker's own timer ends a case: enough that the parent,
    polling every 0.2 s, normally gets there first and the worker's timer only acts alone."""
    return 1.0 + 0.1 * timeout_s


class Worker:
    """A child process that runs cases; replaced whenever it dies or overruns a case's timeout."""

    def __init__(self, device: str, threads: int):
        self.device, self.threads = device, threads
        self.process: mp.process.BaseProcess | None = None
        self.conn = None
        self.oom_kills: OomKillCounter | None = None
        self.idle = False  # started, ready, and waiting for a case: the one state to ask it to exit in

    def _start(self) -> None:
        ctx = mp.get_context("spawn")  # fork after torch has started threads is unsafe
        parent, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, self.device, self.threads, os.getpid()),
                                   daemon=True)
        self.conn = parent
        try:
            with _sigint_ignored():  # inherited by the worker
                self.process.start()
        finally:  # also when a stop signal cuts start() short: close() then reaps what exists
            child.close()
        self.oom_kills = OomKillCounter.of(self.process.pid)
        if not _received_ready(parent):
            code = self._reap(kill=True)
            raise EnvironmentProblem(f"the benchmark worker process did not start ({_ending(code)})")
        self.idle = True

    def run(self, case: Case) -> dict[str, Any]:
        if self.process is not None and not self.process.is_alive():
            self._reap()  # it died between cases (killed while idle): no case's doing
        if self.process is None:
            self._start()
        oom_kills_before = self.oom_kills.read() if self.oom_kills is not None else None
        self.idle = False
        with contextlib.suppress(OSError):  # it died just now: _await_record says how
            self.conn.send(case)
        record = self._await_record(case.measure.timeout_s, oom_kills_before)
        self.idle = self.process is not None
        return record

    def _await_record(self, timeout: float, oom_kills_before: int | None) -> dict[str, Any]:
        started = time.monotonic()
        while True:
            if self.conn.poll(0.2):
                try:
                    return self.conn.recv()
                except EOFError:
                    pass  # died while answering: handled below
            if not self.process.is_alive():
                return self._death_record(self._reap(), timeout, oom_kills_before)
            if time.monotonic() - started > timeout:
                exitcode = self._reap(kill=True)
                if exitcode != -signal.SIGKILL:  # it ended by itself since the check above (were we stopped?)
                    return self._death_record(exitcode, timeout, oom_kills_before)
                return _failure("timeout", f"the case ran past its timeout of {timeout:g} s (measure.timeout_s); "
                                           "the runner killed its worker")

    def _death_record(self, exitcode: int | None, timeout: float, oom_kills_before: int | None) -> dict[str, Any]:
        counter = self.oom_kills
        oom_kills_after = counter.read() if counter is not None else None
        oom_killed = None if None in (oom_kills_before, oom_kills_after) else oom_kills_after > oom_kills_before
        status, error = death_status(exitcode, timeout, oom_killed, counter.scope if counter is not None else "")
        return _failure(status, error)

    def close(self) -> None:
        """End the worker and reap it. An idle worker is asked to exit; one still starting or with a case
        in flight (the run was stopped) is killed: it would only read the request after that."""
        if self.process is None:
            return
        try:
            if self.idle:
                self.conn.send(None)
                self.process.join(timeout=10)
        except OSError:
            pass  # the worker is already gone
        finally:  # even when a stop signal interrupts the polite part
            self._reap(kill=True)

    def _reap(self, kill: bool = False) -> int | None:
        """Wait for the worker to end (killing it first if asked); return its exit code. The worker is
        forgotten only once reaped, so a stop signal cutting this short leaves close() to finish it."""
        process = self.process
        if kill and process.is_alive():
            family = _descendants(process.pid)  # e.g. a compiler it runs: orphans once it is dead
            process.kill()
            for pid in family:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if process.pid is not None:  # None: a stop signal came before start() made the process
            process.join()
        if self.conn is not None:
            self.conn.close()
        self.process, self.conn, self.idle = None, None, False
        return process.exitcode


def _descendants(pid: int) -> list[int]:
    """The pids of a process's children, their children, and so on (from /proc; none without it)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # it ended meanwhile
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore SIGINT while the worker is started: a child inherits an ignored signal (and Python keeps
    it ignored), so a terminal's Ctrl-C, which reaches the whole process group, never reaches the worker,
    not even while it imports; the runner alone decides how a run stops. A Ctrl-C in these few
    milliseconds is lost: the user presses it again."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may change a signal's handling
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _received_ready(conn) -> bool:
    # Short polls: a stop signal delivered to another thread of this process (torch starts some) only
    # runs its Python handler once the main thread is back in Python, and that must be soon.
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not conn.poll(0.2):
        if time.monotonic() > deadline:
            return False
    try:
        return conn.recv() == "ready"
    except EOFError:
        return False


def death_status(exitcode: int | None, timeout_s: float, oom_killed: bool | None,
                 counter_scope: str) -> tuple[str, str]:
    """(status, message) for a worker that died while running a case.

    oom_killed: whether the kernel's OOM-kill counter (counter_scope says which: the worker's memory
    cgroup or the whole machine) rose during the case; None where no counter could be read."""
    if exitcode == -signal.SIGALRM:
        return "timeout", (f"the case ran past its timeout of {timeout_s:g} s (measure.timeout_s): the worker's own "
                           f"timer ended it {watchdog_margin(timeout_s):g} s later, as the runner had not")
    if exitcode == -signal.SIGKILL:
        if oom_killed:
            return "oom", (f"the kernel's out-of-memory killer ended the worker (the oom_kill counter of "
                           f"{counter_scope} rose during this case)")
        if oom_killed is None:
            return "crashed", ("the worker was killed by SIGKILL; moebench cannot tell whether by the kernel's "
                               "out-of-memory killer (no oom_kill counter is readable here)")
        return "crashed", ("the worker was killed by SIGKILL (not the kernel OOM killer, as far as moebench "
                           f"can tell: the oom_kill counter of {counter_scope} did not change)")
    return "crashed", f"the worker {_ending(exitcode)} while running this case"


def _ending(exitcode: int | None) -> str:
    if exitcode is None:
        return "did not end"
    if exitcode < 0:
        try:
            sig = signal.Signals(-exitcode)
        except ValueError:  # a real-time signal has no name
            return f"died from signal {-exitcode}"
        return f"died from signal {sig.name} ({signal.strsignal(sig)})"
    return f"exited with code {exitcode}"


@dataclass(frozen=True)
class OomKillCounter:
    """The kernel's count of processes its OOM killer ended: `oom_kill` in the memory cgroup's
    memory.events (cgroup v2) or memory.oom_control (v1), else machine-wide in /proc/vmstat.

    Read before a case and after the worker's death: a rise means the OOM killer acted meanwhile.
    The counter also counts kills of other processes in the same cgroup (or, machine-wide, anywhere):
    such a kill at the moment someone SIGKILLs the worker is the one case this calls wrongly."""

    path: Path
    scope: str  # what the counter covers, for messages

    @classmethod
    def of(cls, pid: int) -> OomKillCounter | None:
        for path, scope in _counter_candidates(pid):
            counter = cls(path, scope)
            if counter.read() is not None:
                return counter
        return None

    def read(self) -> int | None:
        try:
            text = self.path.read_text()
        except OSError:
            return None
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return None


def _counter_candidates(pid: int) -> Iterator[tuple[Path, str]]:
    """Counter files for a process, its own memory cgroup first (found from /proc/PID/cgroup)."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        hierarchy, controllers, cgroup = line.split(":", 2)
        relative = cgroup.lstrip("/")
        if "memory" in controllers.split(","):  # cgroup v1 (or a hybrid setup's v1 memory controller)
            yield Path("/sys/fs/cgroup/memory", relative, "memory.oom_control"), f"its memory cgroup {cgroup}"
        elif hierarchy == "0":  # cgroup v2, mounted alone or as a hybrid setup's "unified"
            for root in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
                yield Path(root, relative, "memory.events"), f"its memory cgroup {cgroup}"
    yield Path("/proc/vmstat"), "the whole machine"


def _failure(status: str, error: str) -> dict[str, Any]:
    return {"status": status, "error": error, "metrics": {}, "samples": {}}


# --- inside the worker ------------------------------------------------------------------------------

def _worker_main(conn, device: str, threads: int, parent_pid: int) -> None:
    _die_with_parent(parent_pid)
    _offer_to_oom_killer()
    import torch

    import moebench.bench  # noqa: F401 - imported before "ready", so its import time is no case's

    torch.set_num_threads(threads)
    conn.send("ready")
    while True:
        try:
            case = conn.recv()
        except EOFError:  # the parent is gone
            return
        if case is None:
            return
        with _own_timeout(case.measure.timeout_s):
            record = _run_one(case, device, threads)
        conn.send(record)


def _run_one(case: Case, device: str, threads: int) -> dict[str, Any]:
    import torch

    from moebench.bench import run_case

    try:
        return {"status": "ok", "error": None, **run_case(case, device, threads)}
    except Exception as err:  # noqa: BLE001 - any failure of one case is that case's status
        if _is_allocation_failure(err):
            return _failure("oom", f"out of memory: {type(err).__name__}: {_first_line(err)}")
        return _failure("error", f"{type(err).__name__}: {err}\n" + "".join(traceback.format_exc(limit=-3)))
    finally:
        if device == "cuda":
            torch.cuda.empty_cache()


def _is_allocation_failure(err: Exception) -> bool:
    """torch's CUDA out-of-memory, Python's MemoryError, and torch's CPU allocator failing, which is a
    plain RuntimeError ("DefaultCPUAllocator: can't allocate memory: you tried to allocate N bytes")."""
    import torch

    if isinstance(err, (MemoryError, torch.OutOfMemoryError)):
        return True
    return isinstance(err, RuntimeError) and "can't allocate memory" in str(err)


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "(no message)"


PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _die_with_parent(parent_pid: int) -> None:
    """End this process when the runner ends, however it ends (even SIGKILL, which runs no cleanup)."""
    if not _set_parent_death_signal():
        threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()
    if os.getppid() != parent_pid:  # the parent died before the signal was set up
        os._exit(1)


def _set_parent_death_signal() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _exit_when_orphaned(parent_pid: int) -> None:
    while os.getppid() == parent_pid:  # an orphan is adopted by another process
        time.sleep(0.5)
    os._exit(1)


def _offer_to_oom_killer() -> None:
    """Make the worker, not the runner, the kernel's first choice when memory runs out, so the runner
    lives to record the case as oom. Raising one's own score needs no privilege."""
    with contextlib.suppress(OSError):
        Path("/proc/self/oom_score_adj").write_text("500")


@contextlib.contextmanager
def _own_timeout(timeout_s: float) -> Iterator[None]:
    """Arm a kernel timer for the case: SIGALRM with its default action ends the process without
    running any Python code, so a case stuck in C ends too, parent or no parent."""
    if not hasattr(signal, "setitimer"):
        yield
        return
    seconds = timeout_s + watchdog_margin(timeout_s)
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    # A timer past what setitimer takes (an infinite timeout) would be an error, not a longer wait.
    signal.setitimer(signal.ITIMER_REAL, seconds if seconds < LONGEST_TIMER_S else LONGEST_TIMER_S)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
