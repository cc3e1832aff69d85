"""Baseline vs candidate verdicts for CI: is any case slower, did any deterministic counter move,
did the code that ran change, and is any case's evidence missing?

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

A timing verdict compares one implementation with itself. Case records name the implementation
that ran each step (`code`, e.g. {"experts": "onednn", "candidate_topk": "native_c"}); when both
records carry it and it differs, the timing verdict is CHANGED (metric "code", the note names the
steps), never SLOW or FAST: the same code did not run twice. Records without `code` (written before
it existed) are timed as before, with the note "code not recorded".

Deterministic counters (for the same workload seed) are compared exactly: `flops`, `drop_rate`,
`tokens_dropped_frac`, `capacity`, `params`, `trainable_params` and the expert loads (`loads`).
Any difference is CHANGED. A case that ran in the baseline and failed in the candidate is FAILED; a
case of the baseline with no record in the candidate is MISSING; a case only the candidate has is
NEW (informational). SLOW, CHANGED, FAILED and MISSING fail the gate (exit 1), and so does a
comparison in which no case was compared on timing: missing evidence is never a pass.

Two runs are comparable only if they share the schema, the suite, the device and, case by case, the
dtype, and the baseline has at least one finished case; otherwise `NotComparable` (exit 2) says why.
load_run refuses a results file holding a record compare cannot use (`BadRecord`, exit 2), naming
the file and line.
"""

from __future__ import annotations

import json
import math
import string
import unicodedata
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from moebench import stats
from moebench.store import CASE_STATUSES, latest_case_records, read_numbered_records

TIMING = ("latency_s", "cpu_s")  # per-step series under samples.*
# Not dropped_weight_frac: a float sum of router weights, exact only up to reduction order (docs/results.md).
COUNTERS = ("flops", "drop_rate", "tokens_dropped_frac", "capacity", "params", "trainable_params")
FAILING = ("SLOW", "CHANGED", "FAILED", "MISSING")
DEFAULT_THRESHOLD = 0.10
DEFAULT_ALPHA = 0.01


class NotComparable(ValueError):
    """The two runs cannot be compared (different suite, device, dtype, schema, no finished baseline case)."""


class BadRecord(ValueError):
    """A results file holds a line compare cannot use; the message starts with FILE:LINE."""


@dataclass(frozen=True)
class Verdict:
    case_id: str
    metric: str  # "latency_s" or "cpu_s" for timing; "code"; a counter name, "loads" or "status" otherwise
    verdict: str  # SLOW | FAST | SAME | AMBIGUOUS | EQUAL | CHANGED | FAILED | MISSING | NEW | SKIPPED
    baseline: Any = None  # median seconds for timing (and "code"), the value for counters, the status
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

    @property
    def timed(self) -> bool:
        """Whether this is a timing verdict backed by statistics (at least 2 samples a side)."""
        return self.metric in TIMING and self.ratio is not None


# --- reading --------------------------------------------------------------------------------------

def load_run(path: str | Path) -> list[dict[str, Any]]:
    """Every record of one results file (or of the only *.jsonl in a folder), as store.read_numbered_records
    reads it (a line that is no record of this schema is a ValueError naming FILE:LINE), each checked
    further by record_problem; the first record compare cannot use raises BadRecord naming FILE:LINE."""
    path = _results_file(Path(path))
    records = []
    for lineno, record in read_numbered_records(path):
        problem = record_problem(record)
        if problem:
            raise BadRecord(f"{path}:{lineno}: {problem}")
        records.append(record)
    if not any(r["type"] == "run" for r in records):
        raise NotComparable(f"{path}: no run record (is this a moebench results file?)")
    return records


def _results_file(path: Path) -> Path:
    if path.is_dir():
        files = sorted(path.glob("*.jsonl"))
        if len(files) != 1:
            raise NotComparable(f"{path}: expected one results file (*.jsonl) in this folder, found {len(files)}; "
                                "name the file")
        path = files[0]
    if not path.exists():
        raise NotComparable(f"{path}: no such results file")
    return path


def record_problem(record: dict[str, Any]) -> str | None:
    """What makes a record (an object of this schema with a type, as the store reads it) unusable for
    compare, or None if compare can use it."""
    if record["type"] == "run":
        return _run_problem(record)
    if record["type"] == "case":
        return _case_problem(record)
    return None  # another kind of record: compare does not read it


def _run_problem(record: dict) -> str | None:
    if not isinstance(record.get("suite"), str):
        return f"run record: suite {record.get('suite')!r} is not a string"
    if not isinstance(record.get("options", {}), dict):
        return "run record: options is not a JSON object"
    return None


def _case_problem(record: dict) -> str | None:
    case_id = record.get("case_id")
    if not isinstance(case_id, str) or not case_id:
        return f"case record: case_id {case_id!r} is not a non-empty string"
    where = f"case {case_id!r}"
    status = record.get("status")
    if status not in CASE_STATUSES:
        return f"{where}: status {status!r}; allowed: {', '.join(CASE_STATUSES)}"
    if not isinstance(record.get("error"), (str, type(None))):
        return f"{where}: error is neither a string nor null"
    for field in ("spec", "workload", "metrics", "samples", "code"):
        if not isinstance(record.get(field, {}), dict):
            return f"{where}: {field} is not a JSON object"
    code = record.get("code") or {}
    if not all(isinstance(v, str) for v in code.values()):
        return f"{where}: code must map each step to the name of its implementation (a string)"
    if status == "ok":
        return _ok_samples_problem(where, record)
    return None


def _ok_samples_problem(where: str, record: dict) -> str | None:
    """A finished case must carry the per-step times it was judged by: seconds, finite and > 0."""
    absent = [field for field in ("metrics", "samples") if field not in record]
    if absent:
        return f"{where}: status 'ok' without {' and '.join(absent)}"
    samples = record["samples"]
    for key in TIMING:
        values = samples.get(key)
        required = key == "latency_s"  # cpu_s is absent from records older than it
        if values is None and not required:
            continue
        if not isinstance(values, list) or (required and not values) or not all(map(_is_duration, values)):
            return (f"{where}: samples.{key} must be a {'non-empty ' if required else ''}list of finite positive "
                    f"numbers (seconds) for status 'ok'; found {_short(values)}")
    rounds = samples.get("round")
    if rounds is not None and not (isinstance(rounds, list) and all(_is_round(r) for r in rounds)):
        return f"{where}: samples.round must be a list of round numbers (integers >= 0); found {_short(rounds)}"
    return None


def _is_duration(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _is_round(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _short(value: Any, width: int = 60) -> str:
    text = json.dumps(value)
    return text if len(text) <= width else text[:width - 3] + "..."


# --- verdicts -------------------------------------------------------------------------------------

def compare_runs(baseline: list[dict[str, Any]], candidate: list[dict[str, Any]],
                 threshold: float = DEFAULT_THRESHOLD, alpha: float = DEFAULT_ALPHA,
                 seed: int = 0, metric: str = "auto") -> list[Verdict]:
    """Verdicts for every case of the baseline (MISSING where the candidate has none), then NEW for
    the candidate's own cases. Records are those load_run accepts (or abtest.merge_rounds makes)."""
    if not threshold > 0 or not 0 < alpha < 1:
        raise ValueError(f"threshold={threshold}, alpha={alpha}: need threshold > 0 and 0 < alpha < 1")
    base_cases, cand_cases = check_comparable(baseline, candidate)
    verdicts = []
    for case_id, b in base_cases.items():
        c = cand_cases.get(case_id)
        if c is None:
            verdicts.append(Verdict(case_id, "status", "MISSING", b["status"], None,
                                    note="no record of this case in the candidate"))
        else:
            verdicts.extend(case_verdicts(case_id, b, c, threshold, alpha, seed, metric))
    verdicts.extend(Verdict(case_id, "status", "NEW", None, c["status"], note="not in the baseline")
                    for case_id, c in cand_cases.items() if case_id not in base_cases)
    return verdicts


def case_verdicts(case_id: str, b: dict, c: dict, threshold: float, alpha: float, seed: int = 0,
                  metric: str = "auto") -> list[Verdict]:
    """One case present in both runs: its status, or its timing (or code) verdict and its counters."""
    if c["status"] != "ok":
        first_line = (c.get("error") or "").splitlines()[:1]
        note = f"{c['status']}: {first_line[0] if first_line else ''}"
        return [Verdict(case_id, "status", "FAILED" if b["status"] == "ok" else "SKIPPED",
                        b["status"], c["status"], note=note)]
    if b["status"] != "ok":
        return [Verdict(case_id, "status", "SKIPPED", b["status"], c["status"],
                        note="the baseline case did not finish")]
    key = timing_key(b, c, metric)
    timing = timing_verdict(case_id, _samples(b, key), _samples(c, key), threshold, alpha, seed,
                            _groups(b, key), _groups(c, key), metric=key)
    return [code_verdict(timing, b.get("code"), c.get("code")), *counter_verdicts(case_id, b, c)]


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
    base_cases = latest_case_records(baseline)  # a case retried by --resume: its last record counts
    cand_cases = latest_case_records(candidate)
    if not any(r["status"] == "ok" for r in base_cases.values()):
        # Nothing to measure the candidate against; a gate must not read that as a pass.
        raise NotComparable(f"the baseline has no finished case ({len(base_cases)} case records, "
                            "none with status 'ok')")
    for case_id in (k for k in base_cases if k in cand_cases):
        b_dtype = base_cases[case_id].get("spec", {}).get("dtype")
        c_dtype = cand_cases[case_id].get("spec", {}).get("dtype")
        if b_dtype != c_dtype:
            raise NotComparable(f"case {case_id!r} differs in dtype: baseline {b_dtype!r}, candidate {c_dtype!r}")
    return base_cases, cand_cases


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


def code_verdict(timing: Verdict, base_code: dict | None, cand_code: dict | None) -> Verdict:
    """The timing verdict, unless another implementation ran: then CHANGED (metric "code"), keeping
    the medians and ratio as information and naming the steps whose implementation differs."""
    unrecorded = [name for name, code in (("baseline", base_code), ("candidate", cand_code)) if code is None]
    if unrecorded:
        where = "either run" if len(unrecorded) == 2 else f"the {unrecorded[0]}"
        return replace(timing, note=_join(timing.note, f"code not recorded in {where}"))
    differs = code_differences(base_code, cand_code)
    if not differs:
        return timing
    return replace(timing, metric="code", verdict="CHANGED", note=f"code differs: {differs}")


def code_differences(base_code: dict[str, str], cand_code: dict[str, str]) -> str:
    """'step: baseline impl -> candidate impl' for every step that differs, '(none)' where a side lacks it."""
    steps = sorted(k for k in base_code.keys() | cand_code.keys() if base_code.get(k) != cand_code.get(k))
    return ", ".join(f"{s}: {base_code.get(s, '(none)')} -> {cand_code.get(s, '(none)')}" for s in steps)


def _join(*notes: str) -> str:
    return "; ".join(n for n in notes if n)


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
    """FAIL when any verdict fails, and when no case was compared on timing: no evidence is no pass."""
    return any(v.fails for v in verdicts) or not any(v.timed for v in verdicts)


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
    return "-" if x is None else _printable(str(x))


def _printable(text: str) -> str:
    """text on one visible line: control, invisible-format and line-separator characters (newlines,
    terminal escapes, bidi overrides) are written as Python escapes such as \\n or \\u202e."""
    return "".join(ch.encode("unicode_escape").decode("ascii")
                   if unicodedata.category(ch)[0] == "C" or unicodedata.category(ch) in ("Zl", "Zp") else ch
                   for ch in text)


def _rows(verdicts: list[Verdict], everything: bool) -> list[Verdict]:
    """Timing, code and status verdicts always; counters only when they changed (unless everything)."""
    return [v for v in verdicts if everything or v.metric in TIMING + ("status",) or v.verdict != "EQUAL"]


def summary_line(verdicts: list[Verdict], name_cases: bool = True) -> str:
    """PASS or FAIL, the count of each verdict, and (name_cases) the failing cases."""
    counts: dict[str, int] = {}
    for v in verdicts:
        counts[v.verdict] = counts.get(v.verdict, 0) + 1
    shown = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no verdicts"
    failing = sorted({v.case_id for v in verdicts if v.fails})
    head = "FAIL" if gate_failed(verdicts) else "PASS"
    tail = "" if failing or any(v.timed for v in verdicts) else "; no case was compared on timing"
    if failing and name_cases:
        tail += f"; failing cases: {', '.join(_printable(c) for c in failing)}"
    return f"{head}: {shown}{tail}"


def format_table(verdicts: list[Verdict], everything: bool = False) -> str:
    header = (f"{'case':<56} {'metric':<18} {'verdict':<9} {'baseline':>12} {'candidate':>12} "
              f"{'ratio':>6} {'95% CI':>16} {'p':>8}")
    lines = [header, "-" * len(header)]
    for v in _rows(verdicts, everything):
        ratio, ci, p = _fmt_ratio(v)
        note = _printable(v.note)
        lines.append(f"{_printable(v.case_id)[:56]:<56} {v.metric:<18} {v.verdict:<9} {_fmt_value(v.baseline):>12} "
                     f"{_fmt_value(v.candidate):>12} {ratio:>6} {ci:>16} {p:>8}" + (f"  {note}" if note else ""))
    lines.append(summary_line(verdicts))
    return "\n".join(lines)


_HTML_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def _md_escape(text: str) -> str:
    """Text that Markdown (GitHub's included) shows as itself: one line, every ASCII punctuation
    character backslash-escaped (emphasis, code, links, images, table pipes, strikethrough,
    autolinks) and < > & as entities (HTML)."""
    return "".join(_HTML_ENTITIES.get(ch) or ("\\" + ch if ch in string.punctuation else ch)
                   for ch in _printable(text))


def _md_text(text: str) -> str:
    """Text from a results file (a case id, a note, a value) in a Markdown table cell: escaped, and
    inside <code> because GitHub links @mentions, #refs and :emoji: in rendered text but not in code."""
    return f"<code>{_md_escape(text)}</code>" if text else ""


def format_markdown(verdicts: list[Verdict], threshold: float, alpha: float, title: str = "moebench gate",
                    everything: bool = False) -> str:
    mark = {"SLOW": ":red_circle: SLOW", "CHANGED": ":red_circle: CHANGED", "FAILED": ":red_circle: FAILED",
            "MISSING": ":red_circle: MISSING", "FAST": ":green_circle: FAST",
            "AMBIGUOUS": ":yellow_circle: AMBIGUOUS"}
    # The heading names no case (the table's rows do, escaped), so its summary is moebench's own words.
    lines = [f"### {_md_escape(title)}: {summary_line(verdicts, name_cases=False)}", "",
             f"Threshold {threshold:.0%}, alpha {alpha:g}. SLOW needs the ratio past the threshold, "
             "Mann-Whitney p < alpha and the CI's lower bound past half the threshold.", "",
             "| case | metric | verdict | baseline | candidate | ratio | 95% CI | p | note |",
             "|---|---|---|---:|---:|---:|---|---:|---|"]
    for v in _rows(verdicts, everything):
        ratio, ci, p = _fmt_ratio(v)
        cells = [_md_text(v.case_id), v.metric, mark.get(v.verdict, v.verdict), _md_value(v.baseline),
                 _md_value(v.candidate), ratio, ci, p, _md_text(v.note)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _md_value(x: Any) -> str:
    """Numbers as moebench formats them; anything else read from a file goes through _md_text."""
    text = _fmt_value(x)
    return text if x is None or isinstance(x, (int, float)) and not isinstance(x, bool) else _md_text(text)


def format_json(verdicts: list[Verdict], threshold: float, alpha: float) -> str:
    def clean(x):
        return None if isinstance(x, float) and not math.isfinite(x) else x

    rows = [{k: clean(v) for k, v in asdict(verdict).items()} for verdict in verdicts]
    return json.dumps({"threshold": threshold, "alpha": alpha, "failed": gate_failed(verdicts),
                       "summary": summary_line(verdicts), "verdicts": rows}, indent=2)
