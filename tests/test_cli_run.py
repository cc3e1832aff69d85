"""`moebench run` from the command line: dry runs, bad input (exit 2, nothing written), no CUDA (exit 3)."""

import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from moebench.cli import cli, usable_cpus
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
