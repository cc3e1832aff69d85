"""Result records: a versioned schema, append-safe writes, and loading into pandas.

One run = one JSONL file. Its first line is the run record (conditions: environment, options); every
following line is one case record, appended and fsync'ed the moment that case finishes, so a kill at
any moment loses at most the case in flight. A `--resume` appends a further run record and, for a case
it retries, a further case record: the LAST record of a case id is the one that counts
(latest_case_records, used by every reader).

Storage never corrupts (see ResultWriter): one writer per file (an flock held while the writer is
open), a record is written whole or not at all (a failed write is truncated away), and a line cut
short by a kill or a full disk is moved to `<file>.torn` before the next append, never lost and never
glued to the next record. Readers skip such an unfinished last line with a TornRecordWarning.

Metric names are a contract (docs/results.md#metric-contract): tokens_per_s, latency_s, peak_bytes, flops,
frac_of_ceiling, drop_rate, tokens_dropped_frac, load_max_over_mean, load_cv, dead_experts,
routing_frac, ... Renaming one is a schema change: bump SCHEMA_VERSION.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
CASE_STATUSES = ("ok", "error", "oom", "timeout", "crashed", "skipped")
FINISHED_STATUSES = ("ok", "skipped")  # what --resume keeps; every other status is run again
TORN_SUFFIX = ".torn"


class ResultsFileBusy(ValueError):
    """Another process is writing this results file (bad input for the CLI: exit 2)."""


class ResultsWriteError(OSError):
    """The results file cannot be written (full disk, I/O error, no permission): an environment problem."""

    def __str__(self) -> str:
        return str(self.strerror)  # the message names the file and the cause; no "[Errno N]" prefix


class TornRecordWarning(UserWarning):
    """A results file ends in an unfinished line (a kill or a full disk cut a write short)."""


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: store them as None so every reader agrees."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class ResultWriter:
    """The one writer of a results file: appends records, each one write + fsync, whole or not at all.

    Opening takes an exclusive flock on the file, held until close(): a second writer (another
    `moebench run --resume` of the same run) is refused with ResultsFileBusy naming the holder, so two
    processes never interleave or duplicate records. exclusive=True also refuses a file that exists
    (a new run never appends to another run's file). Before each append an unfinished last line is
    set aside (moved to `<file>.torn`), so the new record always starts on a line of its own.
    """

    def __init__(self, path: Path, exclusive: bool = False):
        self.path = Path(path)
        self.fd = -1
        self.created = exclusive  # a file of our own: removed again if not even its first record fits
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | (os.O_EXCL if exclusive else 0)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, flags, 0o644)
        except FileExistsError:
            raise  # exclusive=True and the name is taken: the caller picks another name
        except OSError as err:
            raise ResultsWriteError(err.errno, f"cannot open results file {self.path} for appending: "
                                               f"{err.strerror or err}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            os.close(fd)
            raise ResultsFileBusy(f"{self.path} is being written by another moebench run ({holder}); wait for "
                                  "it to finish, or write to another --out folder") from None
        except OSError as err:  # a file system without locks (some network or FUSE mounts)
            os.close(fd)
            raise ResultsWriteError(err.errno, f"cannot lock results file {self.path}: {err.strerror or err}; "
                                               "write to a folder on a local disk (--out)") from None
        self.fd = fd
        self._set_aside_torn_tail()  # now, so that readers of the file see whole records only

    def append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(_clean({"schema": SCHEMA_VERSION, **record}), sort_keys=True) + "\n").encode()
        self._set_aside_torn_tail()
        size = os.fstat(self.fd).st_size
        try:
            _write_all(self.fd, line)
            os.fsync(self.fd)
        except OSError as err:
            self._truncate(size)
            if self.created and size == 0:
                self.path.unlink(missing_ok=True)
                kept = "the new file was removed"
            else:
                kept = f"the file keeps its {size} bytes of complete records"
            raise ResultsWriteError(err.errno, f"cannot append to results file {self.path}: "
                                               f"{err.strerror or err}; the record was not written ({kept})") from None

    def close(self) -> None:
        """Release the file (and its lock). A file this writer created that is still empty (the run
        stopped before its first record) is removed: no reader could use it."""
        if self.fd >= 0:
            if self.created and os.fstat(self.fd).st_size == 0:
                self.path.unlink(missing_ok=True)
            os.close(self.fd)  # releases the lock
            self.fd = -1

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def _truncate(self, size: int) -> None:
        """Cut a partly written record away: the file is back to whole records only."""
        try:
            os.ftruncate(self.fd, size)
            os.fsync(self.fd)
        except OSError:
            pass  # nothing better to do; the next open sets the partial line aside as torn

    def _set_aside_torn_tail(self) -> None:
        """If the file does not end in a newline, end it properly: a tail that is a whole record (only its
        newline is missing) gets its newline; anything else moves to `<file>.torn` (appended and fsync'ed
        before the results file is cut, so a crash in between keeps the bytes twice rather than never)."""
        size = os.fstat(self.fd).st_size
        if size == 0 or os.pread(self.fd, 1, size - 1) == b"\n":
            return
        start = _last_line_start(self.fd, size)
        tail = os.pread(self.fd, size - start, start)
        torn = self.path.with_name(self.path.name + TORN_SUFFIX)
        try:
            if _parse_object(tail) is not None:
                _write_all(self.fd, b"\n")
                return
            with open(torn, "ab") as f:
                f.write(tail + b"\n")
                f.flush()
                os.fsync(f.fileno())
            os.ftruncate(self.fd, start)
            os.fsync(self.fd)
        except OSError as err:
            raise ResultsWriteError(err.errno, f"cannot set aside the unfinished last line of {self.path} "
                                               f"(to {torn}): {err.strerror or err}") from None
        warnings.warn(f"{self.path}: its unfinished last line ({len(tail)} bytes, a write cut short by a kill or "
                      f"a full disk) was moved to {torn}", TornRecordWarning, stacklevel=3)


def _write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written; a write that makes no progress is a full disk."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[n:]


def _last_line_start(fd: int, size: int) -> int:
    """Offset just after the last newline before `size` (0 if there is none)."""
    end = size
    while end > 0:
        begin = max(0, end - 65536)
        chunk = os.pread(fd, end - begin, begin)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            return begin + newline + 1
        end = begin
    return 0


def _lock_holder(fd: int) -> str:
    """Who holds the flock on fd's file, from /proc/locks (Linux): 'pid N: its command line'."""
    st = os.fstat(fd)
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return "its process id is unknown"
    for line in lines:
        fields = line.split()
        if "FLOCK" in fields and key in fields and "->" not in fields:
            pid = fields[fields.index(key) - 1]
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    command = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                command = ""
            return f"pid {pid}" + (f": {command}" if command else "")
    return "its process id is unknown"


def _parse_object(line: bytes) -> dict[str, Any] | None:
    """The JSON object on a line, or None if the line is not one (bad JSON, bad UTF-8, another type)."""
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):  # bad JSON, bad UTF-8, absurd nesting
        return None
    return value if isinstance(value, dict) else None


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """Every record of a results file, in file order (read_numbered_records without the numbers)."""
    for _, record in read_numbered_records(path):
        yield record


def read_numbered_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for every record of a results file, in file order; ValueError naming
    file:line for a line that is not a record of this schema, and for a path that is not a regular file
    (a pipe or a device could block or never end). An unfinished last line that is not a JSON object
    (a write cut short, or one in flight while a run writes) is skipped with a TornRecordWarning; the
    next append moves it to `<file>.torn`."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise ValueError(f"{path}: not a regular file; name a results file (*.jsonl)")
    try:
        lines = path.read_bytes().split(b"\n")
    except FileNotFoundError:
        raise ValueError(f"{path}: no such results file") from None
    except OSError as err:
        raise ValueError(f"{path}: cannot read ({err.strerror})") from None
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        record = _parse_object(line)
        if record is None and i == len(lines) - 1:  # no newline after it
            warnings.warn(f"{path}:{i + 1}: an unfinished last line ({len(line)} bytes, a write cut short or "
                          "still in flight) was skipped", TornRecordWarning, stacklevel=2)
            continue
        yield i + 1, _check_record(f"{path}:{i + 1}", line, record)


def first_record(path: Path) -> dict[str, Any] | None:
    """The first record of a results file, reading only its first line (None for an empty file or an
    unfinished first line); ValueError naming file:1 if that line is not a record."""
    with Path(path).open("rb") as f:
        line = f.readline()
    record = _parse_object(line)
    if not line.strip() or (record is None and not line.endswith(b"\n")):
        return None
    return _check_record(f"{path}:1", line, record)


def _check_record(where: str, line: bytes, record: dict[str, Any] | None) -> dict[str, Any]:
    if record is None:
        try:
            what = f"a JSON {type(json.loads(line)).__name__}, not an object"
        except (ValueError, RecursionError):
            what = "not valid JSON"
        raise ValueError(f"{where}: not a JSON record ({what})")
    if record.get("schema") != SCHEMA_VERSION:
        raise ValueError(f"{where}: schema {record.get('schema')!r}, this moebench reads schema {SCHEMA_VERSION}")
    if not isinstance(record.get("type"), str):
        raise ValueError(f"{where}: record without a 'type' (allowed: 'run', 'case')")
    if record["type"] == "case" and not isinstance(record.get("case_id"), str):
        raise ValueError(f"{where}: case record without a 'case_id' string")
    return record


def latest_case_records(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The case records that count, by case id: the LAST record of each case id in file order (a case
    retried by --resume supersedes its earlier record). Ordered by each case id's first appearance."""
    latest: dict[str, dict[str, Any]] = {}
    for record in records:
        if record.get("type") == "case":
            latest[record["case_id"]] = record
    return latest


def finished_case_ids(path: Path) -> set[str]:
    """Case ids whose latest record is ok or skipped: what --resume does not run again."""
    return {case_id for case_id, record in latest_case_records(read_records(path)).items()
            if record.get("status") in FINISHED_STATUSES}


def load_results(*paths: str | Path) -> "pandas.DataFrame":  # noqa: F821
    """One row per case: identity columns, spec.* and workload.* parameters, and every metric.

    Raw timing samples stay in the `samples` column (a list per row). Run conditions are attached
    as env.* columns from the run record of the file the case came from.
    """
    import pandas as pd

    rows = []
    for file in results_files(paths):
        rows.extend(_case_rows(file))
    return pd.DataFrame(rows)


def results_files(paths: Iterable[str | Path]) -> list[Path]:
    """Every results file named, or inside a folder named (its *.jsonl, sorted); ValueError naming a
    path that does not exist or a folder with no results."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(path.glob("*.jsonl"))
            if not found:
                raise ValueError(f"{path}: no results (*.jsonl) in this folder")
            files += found
        elif path.exists():
            files.append(path)  # read_numbered_records refuses what is not a regular file, naming it
        else:
            raise ValueError(f"{path}: no such results file")
    return files


def _case_rows(file: Path) -> list[dict[str, Any]]:
    """load_results' rows of one file: the latest record of each case, with the environment of the run
    record (session) it was written under."""
    env: dict[str, Any] = {}
    latest: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for record in read_records(file):
        if record["type"] == "run":
            env = record.get("environment", {})
        elif record["type"] == "case":
            latest[record["case_id"]] = (record, env)
    rows = []
    for record, env in latest.values():
        row = {k: record.get(k) for k in ("run_id", "suite", "case_id", "status", "error")}
        row["file"] = str(file)
        row.update({f"spec.{k}": v for k, v in record.get("spec", {}).items()})
        row.update({f"workload.{k}": v for k, v in record.get("workload", {}).items()})
        row.update(record.get("metrics", {}))
        row["samples"] = record.get("samples", {}).get("latency_s")
        row.update({f"env.{k}": v for k, v in env.items() if not isinstance(v, (dict, list))})
        rows.append(row)
    return rows
