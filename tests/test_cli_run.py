"""`moebench run` from the command line: dry runs, bad input (exit 2, nothing written), no CUDA (exit 3),
--resume and the results file (a torn line, a second writer, a full disk)."""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner

from moebench.cli import cli
from moebench.runner import usable_cpus
from moebench.store import load_results, read_records
from moebench.suite import MAX_CASES


def run(*args):
    return CliRunner().invoke(cli, list(args))


def test_dry_run_lists_the_cases_of_a_bundled_suite():
    result = run("run", "capacity", "--dry-run")
    assert result.exit_code == 0
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith(f"{len(lines) - 1} cases in suite 'capacity'")
    assert any("routing=zipf" in line for line in lines)


def test_filter_narrows_the_cases():
    result = run("run", "quick", "--dry-run", "--filter", "variant=token_choice", "--filter", "backend")
    cases = result.output.strip().splitlines()[:-1]
    assert cases and all("variant=token_choice" in c and "backend=" in c for c in cases)


@pytest.mark.parametrize("text, field", [
    ("base: {n_experts: 8}\nbogus_key: 1\n", "bogus_key"),
    ("base: {top_k: two}\n", "LayerSpec.top_k"),
    ("base: {capacity_factor: -1.0}\n", "LayerSpec.capacity_factor"),
])
def test_a_malformed_suite_exits_2_naming_file_and_field_and_writes_nothing(tmp_path, text, field):
    suite = tmp_path / "bad.yaml"
    suite.write_text(text)
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "moebench.cli", "run", str(suite), "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert str(suite) in proc.stderr and field in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1  # one clear message, no traceback
    assert not out.exists()


def test_unknown_suite_and_bad_option_exit_2():
    assert run("run", "nope").exit_code == 2
    assert run("run", "quick", "--device", "tpu").exit_code == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda_exits_3(tmp_path):
    result = run("run", "quick", "--device", "cuda", "--out", str(tmp_path / "r"))
    assert result.exit_code == 3
    assert "CUDA is not available" in result.output
    assert not (tmp_path / "r").exists()


def test_filter_values_match_as_the_suite_file_writes_them():
    """`cuda_graph=true` (YAML) and `cuda_graph=True` (Python) pick the same cases; so do 1.25 and 1.250."""
    for value in ("true", "True"):
        result = run("run", "gpu_speed", "--dry-run", "--filter", f"cuda_graph={value}")
        assert result.exit_code == 0 and "2 cases" in result.output, result.output
    assert "4 cases" in run("run", "gpu_speed", "--dry-run", "--filter", "capacity_factor=1.250").output


# --- results files and --resume: real runs of a one- or two-case suite -----------------------------

TINY = """\
base: {d_model: 16, d_ff: 32, n_experts: 4, top_k: 2}
workload: {tokens: 16}
measure: {warmup: 1, min_samples: SAMPLES, max_samples: SAMPLES, budget_s: 0.05, phases: false, memory: false,
          ceiling: false, timeout_s: 120}
"""


def tiny_suite(folder, name="tiny", grid="grid: {tokens: [8, 16]}\n", samples=3):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(TINY.replace("SAMPLES", str(samples)) + grid)
    return path


def cli_run(*args):
    """`python -m moebench.cli run ...` in a real process (stderr as a user sees it)."""
    return subprocess.run([sys.executable, "-m", "moebench.cli", "run", *map(str, args)], capture_output=True,
                          text=True)


def case_ids(path):
    return [r["case_id"] for r in read_records(path) if r["type"] == "case"]


def test_resume_of_suite_x_never_picks_up_a_run_of_suite_x_big(tmp_path):
    out = tmp_path / "out"
    assert run("run", str(tiny_suite(tmp_path, "x-big")), "--out", str(out)).exit_code == 0
    result = run("run", str(tiny_suite(tmp_path, "x")), "--out", str(out), "--resume")
    assert result.exit_code == 0, result.output
    (x_run,) = out.glob("x-2*.jsonl")
    assert case_ids(x_run) == ["tokens=8", "tokens=16"]
    (big_run,) = out.glob("x-big-*.jsonl")
    assert case_ids(big_run) == ["tokens=8", "tokens=16"]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """A finished one-case run with --threads 1 (no --dtype) of tiny.yaml, and its results file."""
    folder = tmp_path_factory.mktemp("first")
    suite = tiny_suite(folder, grid="grid: {tokens: [8]}\n")
    assert run("run", str(suite), "--out", str(folder / "out"), "--threads", "1").exit_code == 0
    (path,) = (folder / "out").glob("tiny-*-cpu.jsonl")
    return suite, path


@pytest.mark.parametrize("change, message", [
    ("digest", r"the suite file .*tiny.yaml changed \(digest \w+ then, \w+ now\)"),
    ("dtype", r"--dtype \(not given\) then, bfloat16 now\. To continue that run, run with no --dtype"),
    ("threads", r"--threads 1 then, 2 now\. To continue that run, run with --threads 1"),
    ("device", r"has no run on cpu in .*; its newest run is .*-cuda.jsonl \(device cuda\): add --device cuda"),
])
def test_resume_refuses_a_run_made_under_other_conditions_with_exit_2(first_run, tmp_path, change, message):
    suite, path = first_run
    args = ["--threads", "1"]
    if change == "digest":
        suite = tiny_suite(tmp_path / "edited", grid="grid: {tokens: [8, 64]}\n")  # same name, other content
    elif change == "dtype":
        args += ["--dtype", "bfloat16"]
    elif change == "threads":
        args = ["--threads", "2"]
    else:  # the run was on cuda; this resume asks for cpu
        out = tmp_path / "out"
        out.mkdir()
        path = out / path.name.replace("-cpu.jsonl", "-cuda.jsonl")
        path.write_bytes(first_run[1].read_bytes())
    before = path.read_bytes()
    proc = cli_run(suite, "--out", path.parent, "--resume", *args)
    assert proc.returncode == 2, proc.stderr
    assert re.search(message, proc.stderr), proc.stderr
    assert "leave out --resume" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert path.read_bytes() == before and sorted(path.parent.iterdir()) == [path]


def test_resume_runs_failed_cases_again_and_their_new_record_counts(tmp_path):
    out = tmp_path / "out"
    suite = tiny_suite(tmp_path, grid="zip:\n  - {variant: token_choice}\n  - {variant: hash, routing: zipf}\n")
    assert run("run", str(suite), "--out", str(out)).exit_code == 1  # hash + zipf fails: nothing to force
    (path,) = out.glob("tiny-*.jsonl")
    with path.open("a") as f:  # as if the worker had then crashed in the ok case
        f.write(json.dumps({"schema": 1, "type": "case", "case_id": "variant=token_choice", "status": "crashed",
                            "error": "died"}) + "\n")
    result = run("run", str(suite), "--out", str(out), "--resume")
    assert result.exit_code == 1, result.output  # the failing case failed again
    assert case_ids(path)[-2:] == ["variant=token_choice", "variant=hash,routing=zipf"]
    frame = load_results(path)
    assert list(frame["case_id"]) == ["variant=token_choice", "variant=hash,routing=zipf"]
    assert list(frame["status"]) == ["ok", "error"]


def test_resume_without_an_earlier_run_starts_a_new_run_and_says_so(tmp_path):
    proc = cli_run(tiny_suite(tmp_path, grid="grid: {tokens: [8]}\n"), "--out", tmp_path / "out", "--resume")
    assert proc.returncode == 0, proc.stderr
    assert "--resume: no earlier run of tiny on cpu in" in proc.stderr and "starting a new run" in proc.stderr
    assert len(list((tmp_path / "out").glob("tiny-*-cpu.jsonl"))) == 1


def test_resume_after_a_torn_line_sets_it_aside_and_the_file_stays_readable(tmp_path):
    out = tmp_path / "out"
    suite = tiny_suite(tmp_path)
    assert cli_run(suite, "--out", out, "--filter", "tokens=8").returncode == 0
    (path,) = out.glob("tiny-*.jsonl")
    torn = b'{"schema": 1, "type": "case", "case_id": "tokens=16", "metrics": {"lat'
    with path.open("ab") as f:
        f.write(torn)  # the run was killed mid-write
    proc = cli_run(suite, "--out", out, "--resume")
    assert proc.returncode == 0, proc.stderr
    assert f"moebench: warning: {path}: its unfinished last line ({len(torn)} bytes" in proc.stderr
    assert case_ids(path) == ["tokens=8", "tokens=16"]
    assert path.with_name(path.name + ".torn").read_bytes() == torn + b"\n"


def test_a_second_run_writing_the_same_file_is_refused_with_exit_2_naming_the_holder(tmp_path):
    out = tmp_path / "out"
    suite = tiny_suite(tmp_path, grid="grid: {tokens: [8, 16, 24, 32]}\n", samples=20000)  # a minute or more
    first = subprocess.Popen([sys.executable, "-m", "moebench.cli", "run", str(suite), "--out", str(out)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (list(out.glob("tiny-*.jsonl")) and list(read_records(next(out.glob("tiny-*.jsonl"))))):
            assert time.monotonic() < deadline and first.poll() is None, "the first run did not start"
            time.sleep(0.05)
        (path,) = out.glob("tiny-*.jsonl")
        second = cli_run(suite, "--out", out, "--resume")
        assert second.returncode == 2, second.stderr
        assert first.poll() is None, "the first run should still be running"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert f"{path} is being written by another moebench run (pid {first.pid}: " in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    assert [r["type"] for r in read_records(path)] == ["run"] + ["case"] * len(case_ids(path))
    assert sorted(out.iterdir()) == [path]


def test_a_full_disk_is_exit_3_naming_the_file_and_no_partial_record_is_left(tiny_tmpfs, tmp_path):
    (tiny_tmpfs / "filler").write_bytes(b"x" * (56 * 1024))  # 8 KiB left: the run record and ~2 cases fit
    suite = tiny_suite(tmp_path, grid="grid: {tokens: [8, 16, 24, 32, 40, 48, 56, 64]}\n")
    proc = cli_run(suite, "--out", tiny_tmpfs / "out")
    assert proc.returncode == 3, proc.stderr
    (path,) = (tiny_tmpfs / "out").glob("tiny-*.jsonl")
    assert f"moebench: environment problem: cannot append to results file {path}: No space left on device" \
        in proc.stderr
    assert "Traceback" not in proc.stderr
    assert path.read_bytes().endswith(b"\n")
    assert 1 <= len(case_ids(path)) < 8  # whole records only: every line read back
# --- hostile input is bounded: exit 2, one line naming the field, nothing written ----------------------

def run_bounded(*args, memory_bytes=2 << 30, timeout_s=120):
    """The real CLI in a subprocess that may use at most memory_bytes of address space, so that input
    which used to expand without bound fails the test (MemoryError, exit 1) instead of the machine."""
    resource = pytest.importorskip("resource")

    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))

    return subprocess.run([sys.executable, "-m", "moebench.cli", *args], capture_output=True, text=True,
                          timeout=timeout_s, preexec_fn=limit_memory)


def assert_refused(proc_or_result, out, *fragments):
    stderr = proc_or_result.stderr
    code = getattr(proc_or_result, "returncode", getattr(proc_or_result, "exit_code", None))
    assert code == 2, stderr
    assert len(stderr.strip().splitlines()) == 1, stderr  # one line, no traceback
    assert all(f in stderr for f in fragments), stderr
    assert not out.exists() or not any(out.iterdir())


BILLION_LAUGHS = "workload:\n  routing_params:\n" + "".join(
    f"    _{name}: &{name} [{', '.join([f'*{prev}'] * 10) if prev else ', '.join(['x'] * 10)}]\n"
    for prev, name in zip([None, *"abcdefgh"], "abcdefghi", strict=True))
TEN_MILLION_CASES = "grid:\n" + "".join(f"  {axis}: [{', '.join(str(i) for i in range(1, 11))}]\n" for axis in
                                         ("tokens", "seed", "batch", "input_variants", "expand", "hash_seed",
                                          "sinkhorn_iters"))


@pytest.mark.parametrize("text, fragments", [
    ("base: {capacity_factor: .nan}\n", ["LayerSpec.capacity_factor=nan", "finite"]),
    ("grid: {capacity_factor: [1.0, .inf]}\n", ["LayerSpec.capacity_factor=inf", "finite"]),
    ("measure: {min_samples: 9, max_samples: 3}\n", ["measure.min_samples=9 and max_samples=3"]),
    ("measure: {rel_ci: 0}\n", ["measure.rel_ci=0"]),
    ("on_cuda: {workload: {tokens: -5}}\n", ["workload.tokens=-5", "on_cuda"]),
    ("base: {d_model: 32}\nworkload: {tokens: 8}\nbase: {d_model: 64}\n", [":3:", "duplicate key 'base'"]),
    (BILLION_LAUGHS, ["aliases expand to more than"]),
    (TEN_MILLION_CASES, ["10,000,000 cases", f"limit of {MAX_CASES:,}", "tokens 10 x seed 10"]),
])
def test_hostile_suites_exit_2_at_once_naming_the_field_and_write_nothing(tmp_path, text, fragments):
    suite = tmp_path / "hostile.yaml"
    suite.write_text(text)
    out = tmp_path / "results"
    proc = run_bounded("run", str(suite), "--out", str(out))
    assert_refused(proc, out, str(suite), *fragments)


def test_threads_beyond_the_machine_exit_2_and_write_nothing(tmp_path):
    out = tmp_path / "results"
    result = run("run", "quick", "--threads", str(usable_cpus() + 1), "--out", str(out), "--filter", "hash")
    assert_refused(result, out, "--threads", f"more than the {usable_cpus()} CPUs")
    assert_refused(run("env", "--threads", str(usable_cpus() + 1)), out, "--threads")


@pytest.mark.parametrize("flt, fragments", [
    ("varient=token_choice", ["unknown key 'varient'", "variant"]),
    ("=token_choice", ["unknown key ''"]),
    ("", ["--filter '' is empty"]),
    ("variant=no_such_variant", ["no case matches --filter 'variant=no_such_variant'"]),
])
def test_bad_filters_exit_2_in_dry_runs_and_real_runs(tmp_path, flt, fragments):
    out = tmp_path / "results"
    for extra in (["--dry-run"], ["--out", str(out)]):
        assert_refused(run("run", "quick", "--filter", flt, *extra), out, *fragments)


def test_an_out_folder_that_cannot_be_created_exits_2_before_anything_runs(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    result = run("run", "quick", "--filter", "hash", "--out", str(blocker / "results"))
    assert_refused(result, tmp_path / "results", "--out", "is not a folder")
    assert_refused(run("run", "quick", "--filter", "hash", "--out", ""), tmp_path / "results", "--out", "empty")


@pytest.mark.parametrize("option, fragment", [(["--filter", "varient=token_choice"], "unknown key 'varient'"),
                                              (["--threads", str(usable_cpus() + 1)], "--threads")])
def test_compare_against_refuses_bad_options_before_any_run(tmp_path, option, fragment):
    out = tmp_path / "ab"
    assert_refused(run("compare", "--against", "HEAD", "--out", str(out), *option), out, fragment)
