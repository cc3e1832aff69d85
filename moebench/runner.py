"""Run a suite's cases: isolation, timeouts, OOM capture, resume, progress.

Cases run one at a time in a worker process (started once, torch imported once). The parent only
schedules, writes and reports, so whatever happens to a case (an exception, an out-of-memory, a hang
past its timeout, a segfault or the kernel's OOM killer) becomes that case's status and the suite
goes on with a fresh worker. Each record is appended and fsync'ed as its case finishes (store.py),
so killing the run loses at most the case in flight, and --resume skips every case already recorded.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from moebench.store import ResultWriter, finished_case_ids
from moebench.suite import SPEC_FIELDS, WORKLOAD_FIELDS, Case, Suite


class EnvironmentProblem(RuntimeError):
    """The machine cannot run what was asked (e.g. --device cuda without CUDA): exit code 3."""


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
                   # single-process today; expert-parallel runs (DESIGN.md) will write one file per rank
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


class Worker:
    """A child process that runs cases; replaced whenever it dies or overruns a case's timeout."""

    def __init__(self, device: str, threads: int):
        self.device, self.threads = device, threads
        self.process: mp.process.BaseProcess | None = None
        self.conn = None

    def _start(self) -> None:
        ctx = mp.get_context("spawn")  # fork after torch has started threads is unsafe
        parent, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, self.device, self.threads), daemon=True)
        self.process.start()
        child.close()
        self.conn = parent
        # Wait for the worker's imports (torch: seconds) so they never count against a case's timeout.
        if not parent.poll(300) or parent.recv() != "ready":
            raise EnvironmentProblem("the benchmark worker process did not start")

    def run(self, case: Case) -> dict[str, Any]:
        if self.process is None or not self.process.is_alive():
            self._start()
        started = time.monotonic()
        self.conn.send(case)
        timeout = case.measure.timeout_s
        while True:
            if self.conn.poll(0.2):
                try:
                    return self.conn.recv()
                except EOFError:
                    pass  # died while answering: handled below
            if not self.process.is_alive():
                code = self.process.exitcode
                self.process = None
                if code == -9:
                    return _failure("oom", "the worker was killed by SIGKILL while running this case "
                                           "(the kernel's out-of-memory killer does this)")
                return _failure("crashed", f"the worker process died with exit code {code}")
            if time.monotonic() - started > timeout:
                self.process.kill()
                self.process.join()
                self.process = None
                return _failure("timeout", f"the case ran past its timeout of {timeout:g} s "
                                           "(measure.timeout_s)")

    def close(self) -> None:
        if self.process is not None and self.process.is_alive():
            self.conn.send(None)
            self.process.join(timeout=10)
            if self.process.is_alive():
                self.process.kill()


def _worker_main(conn, device: str, threads: int) -> None:
    import torch

    from moebench.bench import run_case

    torch.set_num_threads(threads)
    conn.send("ready")
    while True:
        try:
            case = conn.recv()
        except EOFError:  # the parent is gone
            return
        if case is None:
            return
        try:
            record = {"status": "ok", "error": None, **run_case(case, device, threads)}
        except torch.OutOfMemoryError as err:
            record = _failure("oom", str(err).splitlines()[0])
        except Exception as err:  # noqa: BLE001 - any failure of one case is that case's status
            record = _failure("error", f"{type(err).__name__}: {err}\n" + "".join(traceback.format_exc(limit=-3)))
        finally:
            if device == "cuda":
                torch.cuda.empty_cache()
        conn.send(record)


def _failure(status: str, error: str) -> dict[str, Any]:
    return {"status": status, "error": error, "metrics": {}, "samples": {}}


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
