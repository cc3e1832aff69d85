"""Run a suite's cases: isolation, timeouts, OOM capture, resume, progress.

Cases run one at a time in a worker process (started once, torch imported once). The parent only
schedules, writes and reports, so whatever happens to a case (an exception, an out-of-memory, a hang
past its timeout, a segfault or the kernel's OOM killer) becomes that case's status and the suite
goes on with a fresh worker. Each record is appended and fsync'ed as its case finishes (store.py),
so killing the run loses at most the case in flight. --resume continues the newest earlier run of the
suite on the same device (results_file_for), runs again every case whose latest record is not ok, and
refuses a run made under other conditions (ResumeRefused).
The worker never outlives the run (worker.py); under stop_on_signals, SIGINT and SIGTERM stop the run
the same way, the worker reaped.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from moebench.store import (
    ResultsWriteError,
    ResultWriter,
    finished_case_ids,
    first_record,
    latest_case_records,
    read_records,
)
from moebench.suite import SPEC_FIELDS, WORKLOAD_FIELDS, Case, Suite
from moebench.worker import EnvironmentProblem, Worker


class RunStopped(Exception):
    """SIGINT or SIGTERM stopped the run (raised by stop_on_signals); the CLI exits with 128 + the signal."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """While inside, SIGINT and SIGTERM raise RunStopped in the main thread, once, so that run_suite's
    cleanup (kill and reap the worker) runs instead of a traceback (SIGINT) or an orphaned worker
    (SIGTERM). A signal that repeats during the cleanup is ignored rather than cutting it short."""
    raised = False

    def stop(signum, frame):
        nonlocal raised
        if not raised:
            raised = True
            raise RunStopped(signum)

    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set signal handlers (and only it runs them)
        return
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def settle_results(path: Path, case_ids: Iterable[str]) -> int:
    """After a stop: fsync the results file (the signal may have landed between an append's write and
    its fsync) and return how many of case_ids (the run's selected cases) it records, any status."""
    if not path.exists():
        return 0
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return len(set(case_ids) & latest_case_records(read_records(path)).keys())


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask where the OS has one (taskset, a container's
    cpuset), else os.cpu_count()."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class ResumeRefused(ValueError):
    """--resume cannot continue the run it names (bad input: exit 2); the message says what to type."""


@dataclass
class RunOptions:
    device: str = "cpu"
    out_dir: Path = Path("results")
    resume: bool = False
    dtype: str | None = None  # the --dtype override, recorded so --resume can check it
    filters: tuple[str, ...] = ()
    threads: int | None = None  # CPU threads for torch; None = all cores
    show_progress: bool = True


@dataclass
class RunSummary:
    path: Path
    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["status"] != "ok"]


def check_device(device: str) -> None:
    if device not in ("cpu", "cuda"):
        raise ValueError(f"--device {device!r} is invalid; allowed values are cpu, cuda")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise EnvironmentProblem("--device cuda was asked for but CUDA is not available here (torch "
                                     f"{torch.__version__}, built with CUDA {torch.version.cuda}); "
                                     "run with --device cpu or on a machine with an NVIDIA GPU and driver")


def select_cases(cases: list[Case], filters: tuple[str, ...]) -> list[Case]:
    """Keep cases matching every filter: `key=value` matches a varying parameter (or a spec/workload
    field), anything else is a substring of the case id. A key that is neither, an empty filter, or
    filters that keep no case are a ValueError: a typo must not select everything or nothing silently."""
    _check_filter_keys(cases, filters)
    kept = []
    for case in cases:
        ok = True
        for flt in filters:
            if "=" in flt:
                key, value = flt.split("=", 1)
                actual = case.params.get(key, getattr(case.spec, key, getattr(case.workload, key, None)))
                ok = ok and (str(actual) == value or actual == _yaml_value(value))
            else:
                ok = ok and flt in case.case_id
        if ok:
            kept.append(case)
    if filters and not kept:
        raise ValueError(f"no case matches --filter {' '.join(filters)!r}")
    return kept


def _check_filter_keys(cases: list[Case], filters: tuple[str, ...]) -> None:
    axes = {key for case in cases for key in case.params}
    for flt in filters:
        if not flt.strip():
            raise ValueError("--filter '' is empty; give key=value or a part of a case id")
        key = flt.split("=", 1)[0] if "=" in flt else None
        if key is not None and key not in axes | SPEC_FIELDS | WORKLOAD_FIELDS:
            raise ValueError(f"--filter {flt!r}: unknown key {key!r}; valid keys are the axes that vary, "
                             + ", ".join(sorted(axes)) + ", and any LayerSpec or workload field: "
                             + ", ".join(sorted((SPEC_FIELDS | WORKLOAD_FIELDS) - axes)))


def _yaml_value(text: str):
    """A filter value read as the suite file would read it (true, 1.25, null), so that it matches the
    value, not only its Python spelling; text that is not a YAML scalar stays text."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def results_path(suite: Suite, options: RunOptions) -> Path:
    """The file of a new run: SUITE-YYYYmmdd-HHMMSS-DEVICE.jsonl in --out."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path(options.out_dir) / f"{suite.name}-{stamp}-{options.device}.jsonl"


def earlier_runs(suite: Suite, out_dir: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """This suite's runs in out_dir, newest first, with their first run record: files named exactly
    SUITE-YYYYmmdd-HHMMSS-DEVICE.jsonl whose run record names this suite (so suite `x` never picks up
    a run of `x-big`)."""
    name = re.compile(re.escape(suite.name) + r"-(\d{8}-\d{6})-(cpu|cuda)\.jsonl")
    files = [(match.group(1), path) for path in Path(out_dir).glob(f"{glob.escape(suite.name)}-*.jsonl")
             if (match := name.fullmatch(path.name)) and path.is_file()]  # not a folder, not a device
    for _, path in sorted(files, key=lambda f: (f[0], f[1].name), reverse=True):
        run = first_record(path)
        if run is not None and run["type"] == "run" and run.get("suite") == suite.name:
            yield path, run


def results_file_for_resume(suite: Suite, options: RunOptions, threads: int) -> Path | None:
    """The run --resume continues: the newest earlier run of this suite on this device, if it was run
    under the same conditions (else ResumeRefused saying what to type); None if the suite has no run."""
    newest_elsewhere = None
    for path, run in earlier_runs(suite, options.out_dir):
        device = path.stem.rsplit("-", 1)[-1]
        if device == options.device:
            check_resumable(path, run, suite, options, threads)
            return path
        newest_elsewhere = newest_elsewhere or (path, device)
    if newest_elsewhere is not None:
        path, device = newest_elsewhere
        raise ResumeRefused(f"--resume: suite {suite.name!r} has no run on {options.device} in {options.out_dir}; "
                            f"its newest run is {path} (device {device}): add --device {device} to continue that "
                            f"one, or leave out --resume to start a new run on {options.device}")
    return None


def check_resumable(path: Path, run: dict[str, Any], suite: Suite, options: RunOptions, threads: int) -> None:
    """Refuse to mix conditions in one run: the suite file (its digest), --device, --dtype and --threads
    must be those of the run's first run record."""
    recorded = run.get("options") or {}
    changes, fixes = [], []
    if run.get("suite_digest") != suite.digest:
        changes.append(f"the suite file {suite.path} changed (digest {run.get('suite_digest')} then, "
                       f"{suite.digest} now)")
        fixes.append("the suite file as it was")
    for flag, then, now in (("--device", recorded.get("device"), options.device),
                            ("--dtype", recorded.get("dtype"), options.dtype),
                            ("--threads", recorded.get("threads"), threads)):
        if then != now:
            changes.append(f"{flag} {_shown(then)} then, {_shown(now)} now")
            fixes.append(f"{flag} {then}" if then is not None else f"no {flag}")
    if changes:
        raise ResumeRefused(f"--resume: {path} was run under other conditions: {'; '.join(changes)}. To continue "
                            f"that run, run with {', '.join(fixes)}; to start a new run, leave out --resume")


def _shown(value: Any) -> str:
    return "(not given)" if value is None else str(value)


def open_results(suite: Suite, options: RunOptions, threads: int) -> tuple[ResultWriter, bool]:
    """The results file of this run, locked for the whole run (a second writer is refused), and
    whether it continues an earlier run."""
    if options.resume:
        earlier = results_file_for_resume(suite, options, threads)
        if earlier is not None:
            return ResultWriter(earlier), True
    for _ in range(5):
        path = results_path(suite, options)
        try:
            return ResultWriter(path, exclusive=True), False
        except FileExistsError:
            time.sleep(1)  # another run of this suite took this second's name: take the next second's
    raise ResultsWriteError(errno.EEXIST, f"cannot create a new results file in {options.out_dir}: {path.name} exists")


def run_suite(suite: Suite, options: RunOptions, on_event: Callable[[str, dict], None] | None = None) -> RunSummary:
    check_device(options.device)
    cases = select_cases(suite.cases, options.filters)
    if not cases:
        raise ValueError(f"no case of suite {suite.name!r} matches --filter {' '.join(options.filters)!r}")
    threads = options.threads or usable_cpus()
    from moebench.measure.environment import capture_environment

    environment = capture_environment(options.device, threads)  # before the file exists: it imports torch
    writer, resumed = open_results(suite, options, threads)
    try:  # whatever ends the run (a signal, a full disk, a bug), the lock is released
        return _run_cases(suite, options, cases, writer, resumed, threads, environment, on_event)
    finally:
        writer.close()  # an empty file of this run (stopped before its first record) is removed


def _run_cases(suite: Suite, options: RunOptions, cases: list[Case], writer: ResultWriter, resumed: bool,
               threads: int, environment: dict[str, Any], on_event: Callable[[str, dict], None] | None) -> RunSummary:
    """Write the run record, then run every case not finished earlier and append its record."""
    path = writer.path
    done = finished_case_ids(path) if resumed else set()  # only ok/skipped: failed cases run again
    todo = [c for c in cases if c.case_id not in done]
    summary = RunSummary(path=path, skipped=len(cases) - len(todo))
    run_id = path.stem
    writer.append({"type": "run", "run_id": run_id, "suite": suite.name, "suite_digest": suite.digest,
                   "kind": suite.kind, "started": _now(), "resumed": resumed,
                   "options": {"device": options.device, "threads": threads, "filters": list(options.filters),
                               "dtype": options.dtype},
                   # single-process today: one file, written by rank 0 of 1 (docs/results.md#the-run-record)
                   "rank": 0, "world_size": 1,
                   "environment": environment})
    if on_event:
        on_event("start", {"cases": len(todo), "skipped": len(cases) - len(todo), "path": str(path),
                           "resumed": resumed, "case_ids": [c.case_id for c in cases]})
    progress = Progress(len(todo), enabled=options.show_progress)
    worker = Worker(options.device, threads)
    try:
        for case in todo:
            progress.start(case.case_id)
            record = worker.run(case)
            record.update({"type": "case", "run_id": run_id, "suite": suite.name, "case_id": case.case_id,
                           "params": case.params, "spec": case.spec.to_dict(),
                           "workload": _asdict(case.workload), "finished": _now()})
            writer.append(record)
            summary.records.append(record)
            progress.finish(record)
            if on_event:
                on_event("case", record)
    finally:
        worker.close()
    return summary


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _asdict(obj: Any) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(obj)


class Progress:
    """One line per case on stderr with elapsed time and an ETA from the mean case time so far."""

    def __init__(self, total: int, enabled: bool = True):
        self.total, self.enabled, self.done = total, enabled, 0
        self.t0 = time.monotonic()
        self.case_started = self.t0

    def start(self, case_id: str) -> None:
        self.case_started = time.monotonic()
        if self.enabled and sys.stderr.isatty():
            print(f"\r[{self.done + 1}/{self.total}] running {case_id[:70]}", end="", file=sys.stderr, flush=True)

    def finish(self, record: dict[str, Any]) -> None:
        self.done += 1
        if not self.enabled:
            return
        elapsed = time.monotonic() - self.t0
        eta = elapsed / self.done * (self.total - self.done)
        latency = record.get("metrics", {}).get("latency_s")
        shown = f"{latency * 1e3:9.3f} ms" if latency else f"{'-':>12}"
        line = (f"[{self.done:>{len(str(self.total))}}/{self.total}] {_clock(elapsed)} ETA {_clock(eta)} "
                f"{record['status']:<7} {shown}  {record['case_id']}")
        prefix = "\r\033[K" if sys.stderr.isatty() else ""
        print(prefix + line, file=sys.stderr, flush=True)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60:02d}:{seconds % 60:02d}"
