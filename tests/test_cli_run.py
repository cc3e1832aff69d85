"""`moebench run` from the command line: dry runs, bad input (exit 2, nothing written), no CUDA (exit 3)."""

import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from moebench.cli import cli


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
