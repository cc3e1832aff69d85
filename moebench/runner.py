"""Run a suite's cases: isolation, timeouts, OOM capture, resume, progress.

Cases run one at a time in a worker process (started once, torch imported once). The parent only
schedules, writes and reports, so whatever happens to a case (an exception, an out-of-memory, a hang
past its timeout, a segfault or the kernel's OOM killer) becomes that case's status and the suite
goes on with a fresh worker. Each record is appended and fsync'ed as its case finishes (store.py),
so killing the run loses at most the case in flight, and --resume skips every case already recorded.
The worker never outlives the run (worker.py); under stop_on_signals, SIGINT and SIGTERM stop the run
the same way, the worker reaped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from moebench.store import ResultWriter, finished_case_ids
from moebench.suite import Case, Suite
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


def settle_results(path: Path) -> int:
    """After a stop: fsync the results file (the signal may have landed between an append's write and
    its fsync) and return how many cases it records."""
    if not path.exists():
        return 0
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return len(finished_case_ids(path))


@dataclass
class RunOptions:
    device: str = "cpu"
    out_dir: Path = Path("results")
    resume: bool = False
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
    field), anything else is a substring of the case id."""
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
    return kept


def _yaml_value(text: str):
    """A filter value read as the suite file would read it (true, 1.25, null), so that it matches the
    value, not only its Python spelling; text that is not a YAML scalar stays text."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def results_path(suite: Suite, options: RunOptions) -> Path:
    """A new file per run; with --resume, the newest earlier file of this suite (if any)."""
    out = Path(options.out_dir)
    if options.resume:
        earlier = sorted(out.glob(f"{suite.name}-*.jsonl"))
        if earlier:
            return earlier[-1]
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return out / f"{suite.name}-{stamp}-{options.device}.jsonl"


def run_suite(suite: Suite, options: RunOptions, on_event: Callable[[str, dict], None] | None = None) -> RunSummary:
    check_device(options.device)
    cases = select_cases(suite.cases, options.filters)
    if not cases:
        raise ValueError(f"no case of suite {suite.name!r} matches --filter {' '.join(options.filters)!r}")
    path = results_path(suite, options)
    done = finished_case_ids(path) if path.exists() else set()
    todo = [c for c in cases if c.case_id not in done]
    if on_event:
        on_event("start", {"cases": len(todo), "skipped": len(cases) - len(todo), "path": str(path)})
    summary = RunSummary(path=path, skipped=len(cases) - len(todo))
    writer = ResultWriter(path)
    threads = options.threads or os.cpu_count() or 1
    run_id = path.stem
    from moebench.measure.environment import capture_environment

    writer.append({"type": "run", "run_id": run_id, "suite": suite.name, "suite_digest": suite.digest,
                   "kind": suite.kind, "started": _now(), "resumed": bool(done),
                   "options": {"device": options.device, "threads": threads, "filters": list(options.filters)},
                   # single-process today: one file, written by rank 0 of 1 (docs/results.md#the-run-record)
                   "rank": 0, "world_size": 1,
                   "environment": capture_environment(options.device, threads)})
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
