"""Result records: a versioned schema, append-safe writes, and loading into pandas.

One run = one JSONL file. Its first line is the run record (conditions: environment, options); every
following line is one case record, appended and fsync'ed the moment that case finishes, so a kill at
any moment loses at most the case in flight. A line cut short by a kill is ignored on reading.

Metric names are a contract (docs/results.md#metric-contract): tokens_per_s, latency_s, peak_bytes, flops,
frac_of_ceiling, drop_rate, tokens_dropped_frac, load_max_over_mean, load_cv, dead_experts,
routing_frac, ... Renaming one is a schema change: bump SCHEMA_VERSION.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
CASE_STATUSES = ("ok", "error", "oom", "timeout", "crashed", "skipped")


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
    """Appends records to one JSONL file; each record is one write + fsync."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(_clean({"schema": SCHEMA_VERSION, **record}), sort_keys=True) + "\n"
        # One os.write of the whole line on an O_APPEND descriptor: a concurrent reader or a kill
        # sees either the whole line or a cut tail, which read_records skips.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """Every complete record of a results file; a cut last line (a kill mid-write) is skipped."""
    path = Path(path)
    with path.open() as f:
        lines = f.readlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # the line in flight when the run was killed
                continue
            raise ValueError(f"{path}:{i + 1}: not a JSON record") from None
        if record.get("schema") != SCHEMA_VERSION:
            raise ValueError(f"{path}:{i + 1}: schema {record.get('schema')!r}, this moebench reads "
                             f"schema {SCHEMA_VERSION}")
        yield record


def finished_case_ids(path: Path) -> set[str]:
    """Case ids that already have a record (any status): what --resume skips."""
    return {r["case_id"] for r in read_records(path) if r.get("type") == "case"}


def run_records(path: Path) -> list[dict[str, Any]]:
    return [r for r in read_records(path) if r.get("type") == "run"]


def load_results(*paths: str | Path) -> "pandas.DataFrame":  # noqa: F821
    """One row per case: identity columns, spec.* and workload.* parameters, and every metric.

    Raw timing samples stay in the `samples` column (a list per row). Run conditions are attached
    as env.* columns from the run record of the file the case came from.
    """
    import pandas as pd

    rows = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            files = sorted(path.glob("*.jsonl"))
            if not files:
                raise ValueError(f"{path}: no results (*.jsonl) in this folder")
        elif path.exists():
            files = [path]
        else:
            raise ValueError(f"{path}: no such results file")
        for file in files:
            env: dict[str, Any] = {}
            for record in read_records(file):
                if record.get("type") == "run":
                    env = record.get("environment", {})
                    continue
                row = {k: record.get(k) for k in ("run_id", "suite", "case_id", "status", "error")}
                row["file"] = str(file)
                row.update({f"spec.{k}": v for k, v in record.get("spec", {}).items()})
                row.update({f"workload.{k}": v for k, v in record.get("workload", {}).items()})
                row.update(record.get("metrics", {}))
                row["samples"] = record.get("samples", {}).get("latency_s")
                row.update({f"env.{k}": v for k, v in env.items() if not isinstance(v, (dict, list))})
                rows.append(row)
    return pd.DataFrame(rows)
