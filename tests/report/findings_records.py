"""Hand-made cases for the findings tests of throughput, routers, memory, lifelong and models: the
report_records builders, with the workload fields those findings read (mode, expand)."""

from __future__ import annotations

from pathlib import Path

from report_records import case, write_run

from moebench.report.data import load_runs


def timed(case_id: str, params: dict, latency: float, *, tokens: int = 256, mode: str = "forward",
          expand: int = 0, spec: dict | None = None, metrics: dict | None = None, **kwargs) -> dict:
    """A finished case whose median step takes `latency` seconds (tokens/s = tokens / latency)."""
    record = case(case_id, params, spec=spec, tokens=tokens, metrics={
        "latency_s": latency, "tokens_per_s": tokens / latency, **(metrics or {})}, **kwargs)
    record["workload"].update(mode=mode, expand=expand)
    return record


def frame(folder: Path, cases: list[dict], kind: str = "mixed"):
    """The cases DataFrame the report builds from these cases, written as one run."""
    _, df = load_runs([write_run(folder / f"{kind}.jsonl", cases, kind=kind, suite=kind)])
    return df
