"""The CI gate's own quality: how often it cries wolf, and how often it catches a known slowdown.

    python scripts/gate_quality.py --repeats 20 --out results/gate-quality

runs `repeats` A/A comparisons (the same code on both sides: one git worktree of HEAD) and `repeats`
A/B comparisons (the same code, the candidate slowed by MOEBENCH_INJECT_SLOWDOWN=--slowdown, a
testing hook in bench.py), alternating AA, AB, AA, ... so both see the same machine over time. Each
comparison is a full A/B run as `moebench compare --against` does it (abtest.interleave, --rounds
alternating rounds, merged samples) followed by compare.compare_runs with --threshold / --alpha.

A false alarm is an A/A comparison with any case SLOW (the gate would fail a harmless PR); a
detection is an A/B comparison the gate fails. Per-case rates are printed too. Every comparison's
merged records are kept under --out, so `--reanalyse DIR` recomputes the figures for another
threshold or alpha without running anything (tune on one experiment, report on a fresh one).
`--patch` applies a patch to the worktree first, to measure the gate with a proposed change
(scripts/cpu_time.patch: record per-step CPU time, which the gate then judges).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from moebench import compare  # noqa: E402
from moebench.abtest import INJECT_ENV, Side, cli_runner, interleave, merge_rounds, worktree  # noqa: E402
from moebench.store import ResultWriter, read_records  # noqa: E402


def run_experiment(out: Path, repeats: int, rounds: int, slowdown: float, suite: Path, threads: int,
                   patch: Path | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                         check=True).stdout.strip()
    with worktree(REPO, sha) as tree:
        if patch is not None:  # a proposed change to try on both sides (e.g. scripts/cpu_time.patch)
            subprocess.run(["git", "-C", str(tree), "apply", str(patch.resolve())], check=True)
        for i in range(repeats):
            for kind in ("aa", "ab"):
                folder = out / f"{i:02d}-{kind}"
                env = {INJECT_ENV: str(slowdown)} if kind == "ab" else {}
                base, cand = Side("baseline", tree, sha), Side("candidate", tree, sha, env)
                t0, load0 = time.time(), os.getloadavg()[0]
                runs = interleave(base, cand, cli_runner(suite.resolve(), folder, threads), rounds)
                for side, records in zip(("baseline", "candidate"), runs, strict=True):
                    writer = ResultWriter(folder / f"{side}.jsonl")
                    for rec in merge_rounds(records):
                        writer.append({k: v for k, v in rec.items() if k != "schema"})
                (folder / "conditions.json").write_text(json.dumps(
                    {"seconds": time.time() - t0, "loadavg_start": load0, "loadavg_end": os.getloadavg()[0],
                     "slowdown": slowdown if kind == "ab" else 0.0, "rounds": rounds, "threads": threads}))
                print(f"{folder.name}: {time.time() - t0:.0f} s, load {load0:.1f}", file=sys.stderr, flush=True)


def analyse(out: Path, threshold: float, alpha: float, metric: str = "auto") -> dict:
    """Count false alarms and detections over every comparison kept under out."""
    result = {"threshold": threshold, "alpha": alpha, "metric": metric, "aa": [], "ab": []}
    for folder in sorted(p for p in out.iterdir() if p.is_dir() and (p / "candidate.jsonl").exists()):
        kind = folder.name.split("-")[-1]
        base = list(read_records(folder / "baseline.jsonl"))
        cand = list(read_records(folder / "candidate.jsonl"))
        verdicts = compare.compare_runs(base, cand, threshold, alpha, metric=metric)
        verdicts = [v for v in verdicts if v.metric in compare.TIMING]
        conditions = json.loads((folder / "conditions.json").read_text())
        result[kind].append({"name": folder.name, "verdicts": {v.case_id: v.verdict for v in verdicts},
                             "ratios": {v.case_id: round(v.ratio, 3) for v in verdicts},
                             "loadavg": conditions["loadavg_start"]})
    aa, ab = result["aa"], result["ab"]
    result["summary"] = {
        "aa_runs": len(aa),
        "aa_false_slow_runs": sum(any(x == "SLOW" for x in r["verdicts"].values()) for r in aa),
        "aa_false_slow_cases": sum(list(r["verdicts"].values()).count("SLOW") for r in aa),
        "aa_cases": sum(len(r["verdicts"]) for r in aa),
        "ab_runs": len(ab),
        "ab_detected_runs": sum(any(x == "SLOW" for x in r["verdicts"].values()) for r in ab),
        "ab_slow_cases": sum(list(r["verdicts"].values()).count("SLOW") for r in ab),
        "ab_cases": sum(len(r["verdicts"]) for r in ab),
        "mean_loadavg": round(sum(r["loadavg"] for r in aa + ab) / max(1, len(aa + ab)), 2),
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slowdown", type=float, default=0.15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--suite", type=Path, default=REPO / "scripts" / "gate_quality.yaml")
    parser.add_argument("--threshold", type=float, default=compare.DEFAULT_THRESHOLD)
    parser.add_argument("--alpha", type=float, default=compare.DEFAULT_ALPHA)
    parser.add_argument("--metric", choices=["auto", "latency_s", "cpu_s"], default="auto")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "gate-quality")
    parser.add_argument("--patch", type=Path, default=None,
                        help="Apply this patch to the HEAD worktree both sides run (try a proposed change).")
    parser.add_argument("--reanalyse", action="store_true", help="Only recompute the figures from --out.")
    args = parser.parse_args()
    if not args.reanalyse:
        run_experiment(args.out, args.repeats, args.rounds, args.slowdown, args.suite, args.threads, args.patch)
    result = analyse(args.out, args.threshold, args.alpha, args.metric)
    (args.out / f"summary-{args.metric}-t{args.threshold}-a{args.alpha}.json").write_text(json.dumps(result, indent=2))
    for kind in ("aa", "ab"):
        for r in result[kind]:
            print(r["name"], " ".join(f"{v}:{r['ratios'][k]}" for k, v in r["verdicts"].items()))
    s = result["summary"]
    print(f"A/A: {s['aa_false_slow_runs']} of {s['aa_runs']} comparisons had a false SLOW "
          f"({s['aa_false_slow_cases']} of {s['aa_cases']} cases)")
    print(f"A/B +{args.slowdown:.0%}: {s['ab_detected_runs']} of {s['ab_runs']} comparisons failed the gate "
          f"({s['ab_slow_cases']} of {s['ab_cases']} cases SLOW); mean load average {s['mean_loadavg']}")


if __name__ == "__main__":
    main()
