"""Baseline vs candidate verdicts for CI: is any case slower, and did any deterministic counter move?

Timing (the raw per-step samples of each case: `samples.cpu_s` where both runs have them, else
`samples.latency_s`; see timing_key) gets one of four verdicts, with r the ratio of
medians candidate / baseline, [lo, hi] its bootstrap CI and p the two-sided Mann-Whitney p-value
(stats.py), for a threshold t and a level alpha:

    SLOW       r > 1 + t,       p < alpha, lo > 1 + t/2 and every A/B round's own ratio > 1
    FAST       r < 1 / (1 + t), p < alpha, hi < 1 / (1 + t/2) and every A/B round's own ratio < 1
    SAME       1 / (1 + t) <= r <= 1 + t: a change smaller than the threshold is no change
    AMBIGUOUS  r is past the threshold but the statistics do not agree (too few or too noisy samples)

Both conditions must hold because each fails alone on a noisy machine: with hundreds of samples a
rank test calls a 1% drift between two processes significant, and with a few noisy samples a median
can move 10% by chance. The CI bound asks that even the optimistic end of the interval is past half
the threshold. In an A/B run (abtest.py) samples within one process share that process's luck
(what else ran on the machine meanwhile), so pooled samples overstate the evidence; asking every
round to point the same way makes the process, not the sample, the unit that must agree.
README "CI regression gate" has the false-alarm rate and power this rule measured.

Deterministic counters (for the same workload seed) are compared exactly: `flops`, `drop_rate`,
`tokens_dropped_frac`, `capacity`, `params`, `trainable_params` and the expert loads (`loads`).
Any difference is CHANGED. A case that ran in the baseline and failed in the candidate is FAILED.
SLOW, CHANGED and FAILED fail the gate (exit 1).

Two runs are comparable only if they share the schema, the suite, the device and, case by case, the
dtype, and have at least one case in common; otherwise `NotComparable` (exit 2) says why.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from moebench import stats
from moebench.store import latest_case_records, read_records

TIMING = ("latency_s", "cpu_s")  # per-step series under samples.*
COUNTERS = ("flops", "drop_rate", "tokens_dropped_frac", "capacity", "params", "trainable_params")
FAILING = ("SLOW", "CHANGED", "FAILED")
DEFAULT_THRESHOLD = 0.10
DEFAULT_ALPHA = 0.01


class NotComparable(ValueError):
    """The two runs cannot be compared (different suite, device, dtype, schema, no common case)."""


@dataclass(frozen=True)
class Verdict:
    case_id: str
    metric: str  # "latency_s" or "cpu_s" for timing; a counter name, "loads" or "status" otherwise
    verdict: str  # SLOW | FAST | SAME | AMBIGUOUS | EQUAL | CHANGED | FAILED | SKIPPED
    baseline: Any = None  # median seconds for timing, the value for counters
    candidate: Any = None
    ratio: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    n_baseline: int | None = None
    n_candidate: int | None = None
    note: str = ""

    @property
    def fails(self) -> bool:
        return self.verdict in FAILING


def load_run(path: str | Path) -> list[dict[str, Any]]:
    """Every record of one results file (or of the only *.jsonl in a folder)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.jsonl"))
        if len(files) != 1:
            raise NotComparable(f"{path}: expected one results file (*.jsonl) in this folder, found {len(files)}; "
                                "name the file")
        path = files[0]
    if not path.exists():
        raise NotComparable(f"{path}: no such results file")
    records = list(read_records(path))
    if not any(r.get("type") == "run" for r in records):
        raise NotComparable(f"{path}: no run record (is this a moebench results file?)")
    return records


def compare_runs(baseline: list[dict[str, Any]], candidate: list[dict[str, Any]],
                 threshold: float = DEFAULT_THRESHOLD, alpha: float = DEFAULT_ALPHA,
                 seed: int = 0, metric: str = "auto") -> list[Verdict]:
    """Verdicts for every case the two runs share: timing first, then counters that moved or matched."""
    if not threshold > 0 or not 0 < alpha < 1:
        raise ValueError(f"threshold={threshold}, alpha={alpha}: need threshold > 0 and 0 < alpha < 1")
    base_cases, cand_cases = check_comparable(baseline, candidate)
    verdicts = []
    for case_id, b in base_cases.items():
        c = cand_cases.get(case_id)
        if c is None:
            continue
        if c["status"] != "ok":
            first_line = (c.get("error") or "").splitlines()[:1]
            note = f"{c['status']}: {first_line[0] if first_line else ''}"
            verdicts.append(Verdict(case_id, "status", "FAILED" if b["status"] == "ok" else "SKIPPED",
                                    b["status"], c["status"], note=note))
            continue
        if b["status"] != "ok":
            verdicts.append(Verdict(case_id, "status", "SKIPPED", b["status"], c["status"],
                                    note="the baseline case did not finish"))
            continue
        key = timing_key(b, c, metric)
        verdicts.append(timing_verdict(case_id, _samples(b, key), _samples(c, key), threshold, alpha, seed,
                                       _groups(b, key), _groups(c, key), metric=key))
        verdicts.extend(counter_verdicts(case_id, b, c))
    return verdicts


def check_comparable(baseline: list[dict], candidate: list[dict]) -> tuple[dict[str, dict], dict[str, dict]]:
    """The case records of each run by case id, after checking the runs can be compared at all."""
    runs = []
    for name, records in (("baseline", baseline), ("candidate", candidate)):
        run = next((r for r in records if r.get("type") == "run"), None)
        if run is None:
            raise NotComparable(f"the {name} has no run record")
        runs.append(run)
    base_run, cand_run = runs
    for field, get in (("schema", lambda r: r.get("schema")), ("suite", lambda r: r.get("suite")),
                       ("device", lambda r: r.get("options", {}).get("device"))):
        if get(base_run) != get(cand_run):
            raise NotComparable(f"the runs differ in {field}: baseline {get(base_run)!r}, "
                                f"candidate {get(cand_run)!r}")
    base_cases = _cases(baseline)
    cand_cases = _cases(candidate)
    common = [k for k in base_cases if k in cand_cases]
    if not common:
        raise NotComparable(f"the runs share no case (baseline has {len(base_cases)}, candidate {len(cand_cases)})")
    for case_id in common:
        b_dtype = base_cases[case_id].get("spec", {}).get("dtype")
        c_dtype = cand_cases[case_id].get("spec", {}).get("dtype")
        if b_dtype != c_dtype:
            raise NotComparable(f"case {case_id!r} differs in dtype: baseline {b_dtype!r}, candidate {c_dtype!r}")
    return base_cases, cand_cases


def _cases(records: Iterable[dict]) -> dict[str, dict]:
    return latest_case_records(records)  # a case retried by --resume: its last record counts


def timing_key(base: dict, cand: dict, metric: str = "auto") -> str:
    """Which per-step series to judge: `metric`, or with "auto" the per-step CPU time `cpu_s` where
    both records carry it (other processes' load does not stretch it, see README "CI regression
    gate"), else the wall-clock `latency_s`."""
    if metric != "auto":
        return metric
    return "cpu_s" if _samples(base, "cpu_s") and _samples(cand, "cpu_s") else "latency_s"


def _samples(record: dict, key: str = "latency_s") -> list[float]:
    return [x for x in (record.get("samples") or {}).get(key) or [] if x is not None]


def _groups(record: dict, key: str = "latency_s") -> list[int] | None:
    """Round labels of the samples of a merged A/B record (abtest.py); None for a single run."""
    groups = (record.get("samples") or {}).get("round")
    return groups if groups and len(groups) == len(_samples(record, key)) else None


def timing_verdict(case_id: str, base: list[float], cand: list[float], threshold: float, alpha: float,
                   seed: int = 0, base_groups: list[int] | None = None,
                   cand_groups: list[int] | None = None, metric: str = "latency_s") -> Verdict:
    """SLOW / FAST / SAME / AMBIGUOUS for one case's per-step samples (the rule in the module docstring)."""
    if len(base) < 2 or len(cand) < 2:
        return Verdict(case_id, metric, "AMBIGUOUS", note="fewer than 2 samples on a side",
                       n_baseline=len(base), n_candidate=len(cand))
    b_med, c_med = stats.median(base), stats.median(cand)
    ratio = c_med / b_med
    lo, hi = stats.ratio_ci(base, cand, seed=seed, baseline_groups=base_groups, candidate_groups=cand_groups)
    p = stats.mann_whitney(cand, base).p_value
    up, down = 1 + threshold, 1 / (1 + threshold)
    rounds = round_ratios(base, cand, base_groups, cand_groups)
    if down <= ratio <= up:
        verdict = "SAME"
    elif ratio > up and p < alpha and lo > 1 + threshold / 2 and all(r > 1 for r in rounds):
        verdict = "SLOW"
    elif ratio < down and p < alpha and hi < 1 / (1 + threshold / 2) and all(r < 1 for r in rounds):
        verdict = "FAST"
    else:
        verdict = "AMBIGUOUS"
    note = "round ratios " + " ".join(f"{r:.2f}" for r in rounds) if rounds else ""
    return Verdict(case_id, metric, verdict, b_med, c_med, ratio, lo, hi, p, len(base), len(cand), note)


def round_ratios(base: list[float], cand: list[float], base_groups: list[int] | None,
                 cand_groups: list[int] | None) -> list[float]:
    """median(candidate round r) / median(baseline round r) for every round both sides have; [] if
    the samples carry no round labels (a single run per side)."""
    if not base_groups or not cand_groups:
        return []
    by_round: dict[int, tuple[list[float], list[float]]] = {}
    for x, g in zip(base, base_groups, strict=True):
        by_round.setdefault(g, ([], []))[0].append(x)
    for x, g in zip(cand, cand_groups, strict=True):
        by_round.setdefault(g, ([], []))[1].append(x)
    return [stats.median(c) / stats.median(b) for _, (b, c) in sorted(by_round.items()) if b and c]


def counter_verdicts(case_id: str, base: dict, cand: dict) -> list[Verdict]:
    """Exact comparison of the deterministic counters; skipped when the workload seeds differ."""
    if (base.get("workload") or {}).get("seed") != (cand.get("workload") or {}).get("seed"):
        return []
    out = []
    b_metrics, c_metrics = base.get("metrics") or {}, cand.get("metrics") or {}
    pairs = [(name, b_metrics.get(name), c_metrics.get(name)) for name in COUNTERS]
    pairs.append(("loads", base.get("loads"), cand.get("loads")))
    for name, b, c in pairs:
        if b is None and c is None:
            continue
        out.append(Verdict(case_id, name, "EQUAL" if b == c else "CHANGED", b, c))
    return out


def gate_failed(verdicts: list[Verdict]) -> bool:
    return any(v.fails for v in verdicts)


# --- output ---------------------------------------------------------------------------------------

def _fmt_ratio(v: Verdict) -> tuple[str, str, str]:
    if v.ratio is None:
        return "-", "-", "-"
    return f"{v.ratio:.3f}", f"[{v.ci_low:.3f}, {v.ci_high:.3f}]", f"{v.p_value:.2g}"


def _fmt_value(x: Any) -> str:
    if isinstance(x, float):
        return f"{x * 1e3:.3f} ms" if x < 10 else f"{x:.6g}"
    if isinstance(x, list):
        text = json.dumps(x)
        return text if len(text) <= 40 else text[:37] + "..."
    return "-" if x is None else str(x)


def _rows(verdicts: list[Verdict], everything: bool) -> list[Verdict]:
    """Timing verdicts always; counters only when they changed (unless everything)."""
    return [v for v in verdicts if everything or v.metric in TIMING + ("status",) or v.verdict != "EQUAL"]


def summary_line(verdicts: list[Verdict]) -> str:
    counts: dict[str, int] = {}
    for v in verdicts:
        counts[v.verdict] = counts.get(v.verdict, 0) + 1
    shown = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    failing = sorted({v.case_id for v in verdicts if v.fails})
    head = "FAIL" if failing else "PASS"
    tail = f"; failing cases: {', '.join(failing)}" if failing else ""
    return f"{head}: {shown}{tail}"


def format_table(verdicts: list[Verdict], everything: bool = False) -> str:
    header = (f"{'case':<56} {'metric':<18} {'verdict':<9} {'baseline':>12} {'candidate':>12} "
              f"{'ratio':>6} {'95% CI':>16} {'p':>8}")
    lines = [header, "-" * len(header)]
    for v in _rows(verdicts, everything):
        ratio, ci, p = _fmt_ratio(v)
        lines.append(f"{v.case_id[:56]:<56} {v.metric:<18} {v.verdict:<9} {_fmt_value(v.baseline):>12} "
                     f"{_fmt_value(v.candidate):>12} {ratio:>6} {ci:>16} {p:>8}" + (f"  {v.note}" if v.note else ""))
    lines.append(summary_line(verdicts))
    return "\n".join(lines)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def format_markdown(verdicts: list[Verdict], threshold: float, alpha: float, title: str = "moebench gate",
                    everything: bool = False) -> str:
    mark = {"SLOW": ":red_circle: SLOW", "CHANGED": ":red_circle: CHANGED", "FAILED": ":red_circle: FAILED",
            "FAST": ":green_circle: FAST", "AMBIGUOUS": ":yellow_circle: AMBIGUOUS"}
    lines = [f"### {_md_escape(title)}: {_md_escape(summary_line(verdicts))}", "",
             f"Threshold {threshold:.0%}, alpha {alpha:g}. SLOW needs the ratio past the threshold, "
             "Mann-Whitney p < alpha and the CI's lower bound past half the threshold.", "",
             "| case | metric | verdict | baseline | candidate | ratio | 95% CI | p |",
             "|---|---|---|---:|---:|---:|---|---:|"]
    for v in _rows(verdicts, everything):
        ratio, ci, p = _fmt_ratio(v)
        cells = [v.case_id, v.metric, mark.get(v.verdict, v.verdict), _fmt_value(v.baseline),
                 _fmt_value(v.candidate), ratio, ci, p]
        lines.append("| " + " | ".join(_md_escape(c) for c in cells) + " |")
    return "\n".join(lines)


def format_json(verdicts: list[Verdict], threshold: float, alpha: float) -> str:
    def clean(x):
        return None if isinstance(x, float) and not math.isfinite(x) else x

    rows = [{k: clean(v) for k, v in asdict(verdict).items()} for verdict in verdicts]
    return json.dumps({"threshold": threshold, "alpha": alpha, "failed": gate_failed(verdicts),
                       "summary": summary_line(verdicts), "verdicts": rows}, indent=2)
