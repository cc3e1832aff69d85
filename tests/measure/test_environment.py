"""Environment capture: every key present with the right type, and no exception on a bare machine."""

import json
import re
import socket
import subprocess

import torch

import moebench
from moebench.measure.environment import capture_environment, cpu_model, git_state, gpu_info, package_version


def test_cpu_capture_has_every_key_with_its_type():
    env = capture_environment("cpu", threads=2)
    assert env["moebench_version"] == moebench.__version__
    assert env["threads"] == 2 and env["device"] == "cpu"
    assert env["torch_threads"] == torch.get_num_threads()
    assert env["packages"]["torch"] == torch.__version__
    for name in ("numpy", "pandas"):
        assert isinstance(env["packages"][name], str)
    for name in ("transformers", "triton", "nvidia-ml-py"):
        assert name in env["packages"] and isinstance(env["packages"][name], (str, type(None)))
    for key in ("python", "os", "machine"):
        assert isinstance(env[key], str) and env[key]
    assert isinstance(env["cpu_count"], int) and env["cpu_count"] >= 1
    assert isinstance(env["cpu_model"], (str, type(None)))
    assert "ATen" in env["torch_parallel_info"]
    assert env["gpu"] is None
    assert re.fullmatch(r"[0-9a-f]{12}", env["hostname_hash"])
    assert socket.gethostname() not in json.dumps(env)  # JSON-ready, and the host name stays private


def test_the_native_kernels_status_is_recorded():
    """"built", or "unavailable: <reason>" (tests/kernels/test_native_build.py drives the failures)."""
    from moebench.kernels import dispatch_native, peer_native

    status = capture_environment("cpu", threads=1)["native_kernels"]
    built = dispatch_native.available() and peer_native.available()
    assert status == "built" if built else status.startswith("unavailable: ")


def test_git_state_of_this_checkout_matches_git():
    env = capture_environment("cpu", threads=1)
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=moebench.__file__.rsplit("/moebench/", 1)[0]).stdout.strip()
    assert env["git"]["sha"] == head
    assert isinstance(env["git"]["dirty"], bool)


def test_git_state_outside_a_checkout_is_none(tmp_path):
    assert git_state(tmp_path) is None


def test_git_state_of_a_subfolder_of_another_repository_is_none(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "site-packages").mkdir()
    assert git_state(tmp_path / "site-packages") is None  # that repository is not moebench's


def test_missing_pieces_give_none_not_errors():
    assert package_version("surely-not-an-installed-package-xyz") is None
    assert isinstance(cpu_model(), (str, type(None)))
    assert gpu_info("cpu") is None
    assert gpu_info("not a device") is None


def test_cuda_request_is_recorded_even_without_cuda():
    env = capture_environment("cuda", threads=1)
    gpu = env["gpu"]
    assert gpu["cuda_available"] == torch.cuda.is_available()
    assert gpu["cuda_version"] == torch.version.cuda
    if torch.cuda.is_available():
        assert isinstance(gpu["name"], str) and re.fullmatch(r"\d+\.\d+", gpu["compute_capability"])
        assert gpu["memory_bytes"] > 0 and isinstance(gpu["nvml"], dict)
