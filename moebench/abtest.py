"""A/B runs that remove machine drift: the working tree against another git revision, same job, interleaved.

A saved baseline from another day (or another runner) differs from today's run by everything that
changed on the machine; on a shared 2-core runner that is often more than the change under test.
So both revisions run here, now, in alternating rounds:

    round 0: baseline, candidate      round 1: candidate, baseline      round 2: baseline, candidate ...

(the order flips every round, so a drift that grows during the job favours neither side), and the
raw samples of each case are merged over the rounds, labelled with their round so the bootstrap in
stats.ratio_ci resamples within rounds. compare.compare_runs then gives the verdicts.

Each side runs `python -m moebench.cli run SUITE` in a fresh process, the CLI being the one interface
both revisions share. The baseline imports the other revision's moebench from a `git worktree` of it:
PYTHONPATH points at that tree and comes before the (editable) installed package. The run record
says which checkout a process imported (environment.git.sha); `check_side` refuses a round whose
sha is not the one it should be, so a baseline that silently ran the working tree's code is an
error, not a pass. Both sides run the same suite file, the working tree's.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moebench import stats
from moebench.compare import load_run
from moebench.store import ResultWriter

# TESTING HOOK (bench.py): busy-waits this extra fraction of every timed step. Never set in real runs.
INJECT_ENV = "MOEBENCH_INJECT_SLOWDOWN"


class ABError(RuntimeError):
    """A side could not be run (bad revision, the other revision's CLI failed): exit 2."""


@dataclass(frozen=True)
class Side:
    name: str  # "baseline" | "candidate"
    tree: Path  # the checkout whose moebench this side imports
    expected_sha: str | None  # what its run record must say it imported (None: not checked)
    env: dict[str, str] = field(default_factory=dict)  # extra environment (testing hooks only)


# A side runner runs the suite once for one side and returns the records of that run.
SideRunner = Callable[[Side, int], list[dict[str, Any]]]


def rounds_order(rounds: int) -> list[tuple[int, str]]:
    """(round, side) in running order: the first side alternates every round (ABBA...)."""
    order = []
    for r in range(rounds):
        pair = ("baseline", "candidate") if r % 2 == 0 else ("candidate", "baseline")
        order.extend((r, name) for name in pair)
    return order


def interleave(baseline: Side, candidate: Side, run_side: SideRunner,
               rounds: int) -> tuple[list[list[dict]], list[list[dict]]]:
    """Run both sides `rounds` times in alternating order; the records of every round, per side."""
    if rounds < 1:
        raise ValueError(f"rounds={rounds}: need at least 1")
    sides = {"baseline": baseline, "candidate": candidate}
    runs: dict[str, list[list[dict]]] = {"baseline": [], "candidate": []}
    for r, name in rounds_order(rounds):
        runs[name].append(run_side(sides[name], r))
    return runs["baseline"], runs["candidate"]


def merged_code(seen: dict[str, str] | None, code: dict[str, str]) -> dict[str, str]:
    """The `code` of a side over its rounds: a step whose implementation differed between rounds names
    them all ("native_c|torch"), so compare sees other code than a side that ran one, never one round's."""
    merged = dict(seen or {})
    for step, impl in code.items():
        prior = merged.get(step)
        if prior is None:
            merged[step] = impl
        elif impl not in prior.split("|"):
            merged[step] = f"{prior}|{impl}"
    return merged


def merge_rounds(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One run's worth of records from several rounds of the same side.

    The run record is the first round's, with `rounds` added. Each case keeps its first round's
    record (counters, spec) with every round's raw samples concatenated into samples.latency_s,
    samples.round labelling each sample with its round, metrics.latency_s the median of them all,
    and the status of the first round that did not finish ok (a failure in any round is a failure).
    Its `code` names every implementation a step ran in any round (merged_code).
    A round with no record of the case (its run stopped early) counts as that case crashing there.
    """
    if not runs:
        raise ValueError("merge_rounds needs at least one round")
    run_record = dict(next(r for r in runs[0] if r.get("type") == "run"))
    run_record["rounds"] = len(runs)
    merged: dict[str, dict[str, Any]] = {}
    rounds_seen: dict[str, set[int]] = {}
    for r, records in enumerate(runs):
        for rec in records:
            if rec.get("type") != "case":
                continue
            case_id = rec["case_id"]
            rounds_seen.setdefault(case_id, set()).add(r)
            raw = rec.get("samples") or {}
            samples = raw.get("latency_s") or []
            if case_id not in merged:
                first = dict(rec)
                first["metrics"] = dict(rec.get("metrics") or {})
                first["samples"] = {"latency_s": [], "round": []}
                first["round_medians"] = []
                merged[case_id] = first
            out = merged[case_id]
            for key, values in raw.items():  # latency_s, and any other per-step series (e.g. cpu_s)
                if isinstance(values, list) and key != "round":
                    out["samples"].setdefault(key, []).extend(values)
            out["samples"]["round"].extend([r] * len(samples))
            out["round_medians"].append(stats.median(samples) if samples else None)
            if rec.get("status") != "ok" and out.get("status") == "ok":
                out["status"], out["error"] = rec["status"], f"round {r}: {rec.get('error')}"
            if isinstance(rec.get("code"), dict):
                out["code"] = merged_code(out.get("code"), rec["code"])
    for case_id, rec in merged.items():
        absent = [r for r in range(len(runs)) if r not in rounds_seen[case_id]]
        if absent and rec.get("status") == "ok":  # missing evidence is never judged as if complete
            rec["status"], rec["error"] = "crashed", f"round {absent[0]}: no record of this case (the run stopped)"
        if rec["samples"]["latency_s"]:
            rec["metrics"]["latency_s"] = stats.median(rec["samples"]["latency_s"])
    return [run_record, *merged.values()]


# --- running the real CLI -------------------------------------------------------------------------

def side_env(side: Side) -> dict[str, str]:
    """The environment of a side's process: its tree first on PYTHONPATH, testing hooks only if asked."""
    env = {k: v for k, v in os.environ.items() if k != INJECT_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(side.tree), *filter(None, [os.environ.get("PYTHONPATH")])])
    env.update(side.env)
    return env


def cli_runner(suite_path: Path, out_dir: Path, threads: int, device: str = "cpu",
               filters: tuple[str, ...] = (), log: Callable[[str], None] | None = None) -> SideRunner:
    """A SideRunner that runs `python -m moebench.cli run` in the side's tree, one folder per round."""

    def run_side(side: Side, r: int) -> list[dict[str, Any]]:
        folder = out_dir / f"round{r}-{side.name}"
        cmd = [sys.executable, "-m", "moebench.cli", "run", str(suite_path), "--out", str(folder),
               "--device", device, "--threads", str(threads)]
        for flt in filters:
            cmd += ["--filter", flt]
        if log:
            log(f"round {r}: {side.name} ({side.tree})")
        proc = subprocess.run(cmd, cwd=side.tree, env=side_env(side), capture_output=True, text=True)
        files = sorted(folder.glob("*.jsonl"))
        if proc.returncode not in (0, 1) or not files:  # 1 = a case failed: its record says which
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
            raise ABError(f"the {side.name} run (round {r}, {side.tree}) exited {proc.returncode}:\n{tail}")
        records = load_run(files[-1])  # checked record by record: a bad one is exit 2 naming FILE:LINE
        check_side(side, records)
        return records

    return run_side


def check_side(side: Side, records: list[dict[str, Any]]) -> None:
    """Refuse a round that imported a different checkout than the side's (see the module docstring)."""
    if side.expected_sha is None:
        return
    run = next((r for r in records if r.get("type") == "run"), {})
    sha = ((run.get("environment") or {}).get("git") or {}).get("sha")
    if sha != side.expected_sha:
        raise ABError(f"the {side.name} run imported moebench at git sha {sha!r}, expected "
                      f"{side.expected_sha!r} from {side.tree}")


def git(repo: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ABError(f"git {' '.join(args)} failed in {repo}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def resolve_rev(repo: Path, rev: str) -> str:
    proc = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise ABError(f"--against {rev!r} is not a commit of the git repository at {repo}")
    return proc.stdout.strip()


@contextlib.contextmanager
def worktree(repo: Path, sha: str) -> Iterator[Path]:
    """A detached `git worktree` of sha in a temporary folder, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="moebench-ab-") as tmp:
        path = Path(tmp) / "tree"
        git(repo, "worktree", "add", "--detach", str(path), sha)
        try:
            yield path
        finally:
            subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(path)],
                           capture_output=True)
            subprocess.run(["git", "-C", str(repo), "worktree", "prune"], capture_output=True)


@dataclass
class ABResult:
    baseline: list[dict[str, Any]]  # merged records (merge_rounds)
    candidate: list[dict[str, Any]]
    baseline_path: Path
    candidate_path: Path


def run_ab(repo: Path, rev: str, suite_path: Path, out_dir: Path, rounds: int = 3, threads: int = 1,
           device: str = "cpu", filters: tuple[str, ...] = (), inject_slowdown: float = 0.0,
           log: Callable[[str], None] | None = None) -> ABResult:
    """Run the suite for `rev` (baseline) and the working tree at `repo` (candidate), interleaved,
    and write the merged records to out_dir/baseline.jsonl and out_dir/candidate.jsonl.

    inject_slowdown > 0 slows the candidate on purpose (TESTING HOOK for the gate's own quality)."""
    repo = Path(git(Path(repo), "rev-parse", "--show-toplevel"))
    sha = resolve_rev(repo, rev)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    extra = {INJECT_ENV: str(inject_slowdown)} if inject_slowdown > 0 else {}
    with worktree(repo, sha) as base_tree:
        baseline = Side("baseline", base_tree, sha)
        # The candidate is the working tree, whose HEAD may move while we run: its sha is not checked.
        candidate = Side("candidate", repo, None, extra)
        runner = cli_runner(Path(suite_path).resolve(), out_dir, threads, device, filters, log)
        base_runs, cand_runs = interleave(baseline, candidate, runner, rounds)
    result = ABResult(merge_rounds(base_runs), merge_rounds(cand_runs),
                      out_dir / "baseline.jsonl", out_dir / "candidate.jsonl")
    for records, path in ((result.baseline, result.baseline_path), (result.candidate, result.candidate_path)):
        path.unlink(missing_ok=True)
        with ResultWriter(path, exclusive=True) as writer:  # closed (lock released) even on a full disk
            for rec in records:
                writer.append({k: v for k, v in rec.items() if k != "schema"})
    return result
