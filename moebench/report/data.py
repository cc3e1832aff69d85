"""Results files -> one pandas DataFrame of cases, plus the run records they came from.

The report reads the JSONL records itself (moebench.store.read_records) rather than
moebench.load_results because it needs what load_results leaves out: the suite kind, the timing
summary (p10/p90, confidence interval, timer), the per-expert loads and the nested environment
(torch version, GPU name, git sha) that every conditions line is rendered from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from moebench import store
from moebench.store import latest_case_records, read_records


@dataclass(frozen=True)
class Run:
    """One results file's run record, under the label the report shows for it."""

    label: str
    record: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.record.get("kind") or "mixed"

    @property
    def suite(self) -> str:
        return str(self.record.get("suite") or "results")

    @property
    def environment(self) -> dict[str, Any]:
        return self.record.get("environment") or {}


def results_files(paths) -> list[Path]:
    """Every JSONL file named, or inside a folder named; ValueError naming what is missing."""
    if not paths:
        raise ValueError("no results given: pass one or more results .jsonl files or folders")
    return store.results_files(paths)


def load_runs(paths) -> tuple[list[Run], pd.DataFrame]:
    """The runs and one row per case. Columns: run, case_id, status, error, case_params (the suite
    axes; the metric `params` is the parameter count), loads,
    spec.*, workload.*, timing.*, every metric under its contract name, case_record (the record as
    read, raw samples included) and run.device."""
    runs: list[Run] = []
    rows: list[dict[str, Any]] = []
    for file in results_files(paths):
        records = list(read_records(file))  # raises ValueError on a schema mismatch
        run_records = [r for r in records if r.get("type") == "run"]
        cases = list(latest_case_records(records).values())  # a retried case: its last record
        if not run_records:
            raise ValueError(f"{file}: no run record (the first line of a moebench results file)")
        if not cases:
            raise ValueError(f"{file}: no case records; nothing to report")
        run = Run(_unique_label(run_records[0].get("run_id") or file.stem, runs), run_records[0])
        runs.append(run)
        for i, case in enumerate(cases):
            missing = [k for k in ("case_id", "status") if k not in case]
            if missing:
                raise ValueError(f"{file}: case record {i + 1} lacks {', '.join(missing)}")
            rows.append(_row(run, case))
    return runs, pd.DataFrame(rows)


def _unique_label(name: str, runs: list[Run]) -> str:
    """The run id, with a suffix when the same run is given twice (hue needs distinct names)."""
    taken = {r.label for r in runs}
    label, n = str(name), 2
    while label in taken:
        label, n = f"{name} ({n})", n + 1
    return label


def _row(run: Run, case: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"run": run.label, "kind": run.kind, "case_id": str(case["case_id"]),
                           "status": str(case["status"]), "error": case.get("error"),
                           "case_params": case.get("params") or {}, "loads": case.get("loads")}
    row.update({f"spec.{k}": v for k, v in (case.get("spec") or {}).items()})
    row.update({f"workload.{k}": v for k, v in (case.get("workload") or {}).items()
                if not isinstance(v, dict)})
    row.update({f"timing.{k}": v for k, v in (case.get("timing") or {}).items()})
    row.update(case.get("metrics") or {})
    # the raw record and the run's device, for the ratios figure (it reuses compare on the samples)
    row.update({"case_record": case, "run.device": (run.record.get("options") or {}).get("device")
                or run.environment.get("device")})
    row["device"] = run.environment.get("device")  # the findings' conditions name it
    return row


def column(df: pd.DataFrame, name: str) -> pd.Series:
    """df[name] as numbers, all-NaN when no record has it (records differ by variant). An infinite
    value (a hand-edited or broken record) is NaN too: no figure or finding can place or rank it."""
    if name not in df:
        return pd.Series(float("nan"), index=df.index)
    values = pd.to_numeric(df[name], errors="coerce")
    return values.where(np.isfinite(values))


def ok_cases(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "ok"]


# --- conditions -----------------------------------------------------------------------------------

def _values(df: pd.DataFrame, col: str) -> str:
    if col not in df:
        return "?"
    vals = sorted({str(v) for v in df[col].dropna()})
    return "/".join(vals) if vals else "?"


def conditions(df: pd.DataFrame, runs: list[Run]) -> list[str]:
    """One line per run present in df, every field read from the records (so that every number
    carries its conditions): device, dtype, threads, tokens, timer, torch, CPU/GPU, git sha."""
    lines = []
    for run in runs:
        part = df[df["run"] == run.label]
        if part.empty:
            continue
        env = run.environment
        threads = _values(part, "timing.threads")
        if threads == "?":
            threads = str(env.get("threads", "?"))
        git = env.get("git") or {}
        sha = str(git.get("sha") or "?")[:12] + (" (dirty)" if git.get("dirty") else "")
        gpu = env.get("gpu") or {}
        hw = f"GPU {gpu.get('name')}" if gpu.get("name") else f"CPU {env.get('cpu_model') or '?'}"
        torch_version = (env.get("packages") or {}).get("torch") or "?"
        fields = [f"device {env.get('device') or _values(part, 'spec.device')}",
                  f"dtype {_values(part, 'spec.dtype')}", f"{threads} threads",
                  f"tokens {_values(part, 'workload.tokens')}", f"timer {_values(part, 'timing.timer')}",
                  f"torch {torch_version}", hw, f"git {sha}"]
        prefix = f"{run.label}: " if len(runs) > 1 else ""
        lines.append(prefix + " · ".join(fields))
    return lines
