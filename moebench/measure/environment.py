"""What a result was measured on: code version, library versions, machine, threads, GPU and its clocks.

Every field is best effort: a missing git, package, /proc/cpuinfo, driver or GPU gives None (or a
dict with "available": False) and never an exception, because a benchmark must still run and record
what it could. The host name is stored as a short hash: enough to tell runs on the same machine
apart without publishing the name in committed baselines. `native_kernels` says whether moebench's C
kernels built here ("built", or "unavailable: <reason>"; docs/native-kernels.md).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

import torch

from moebench.measure import nvml

PACKAGES = ("torch", "numpy", "pandas", "transformers", "triton", "nvidia-ml-py")


def capture_environment(device: str, threads: int) -> dict[str, Any]:
    """A JSON-ready dict describing the code, libraries, machine and device of this run."""
    import moebench

    return {
        "moebench_version": moebench.__version__,
        "git": git_state(Path(moebench.__file__).resolve().parent.parent),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "packages": {name: package_version(name) for name in PACKAGES},
        "os": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "torch_threads": torch.get_num_threads(),
        "torch_parallel_info": _safe(torch.__config__.parallel_info),
        "device": device,
        "gpu": gpu_info(device),
        "hostname_hash": hashlib.sha256(socket.gethostname().encode()).hexdigest()[:12],
        "native_kernels": _safe(native_kernels, "unavailable: the status check failed"),
    }


def native_kernels() -> str:
    """"built" when moebench's C kernels (moebench/kernels/csrc) compiled and loaded here, else
    "unavailable: <reason>", the reason holding the compiler's first error lines where it failed."""
    from moebench.kernels import dispatch_native, peer_native

    reasons = [b.reason for b in (dispatch_native.build(), peer_native.build()) if b.dll is None]
    return "unavailable: " + "\n".join(dict.fromkeys(reasons)) if reasons else "built"


def _safe(fn, default=None):
    try:
        return fn()
    except Exception:
        return default


def package_version(name: str) -> str | None:
    """Installed version from package metadata, without importing the package (transformers is slow)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_state(repo: Path) -> dict[str, Any] | None:
    """{"sha", "dirty"} of the moebench checkout; None if moebench is not run from a git checkout."""

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        # an installed moebench inside some other repository (e.g. a venv in a user's project) is not ours
        if Path(git("rev-parse", "--show-toplevel")).resolve() != repo.resolve():
            return None
        return {"sha": git("rev-parse", "HEAD"),
                "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except Exception:
        return None


def cpu_model() -> str | None:
    """The CPU's marketing name from /proc/cpuinfo on Linux, else what platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def gpu_info(device: str) -> dict[str, Any] | None:
    """Torch's and NVML's view of the CUDA device; None on a CPU run."""
    dev = _safe(lambda: torch.device(device))
    if dev is None or dev.type != "cuda":
        return None
    info: dict[str, Any] = {"cuda_available": _safe(torch.cuda.is_available, False),
                            "cuda_version": torch.version.cuda}
    if not info["cuda_available"]:
        return info
    index = dev.index if dev.index is not None else _safe(torch.cuda.current_device, 0)
    props = _safe(lambda: torch.cuda.get_device_properties(index))
    if props is not None:
        info |= {"name": props.name, "compute_capability": f"{props.major}.{props.minor}",
                 "memory_bytes": props.total_memory, "multiprocessors": props.multi_processor_count,
                 "l2_cache_bytes": getattr(props, "L2_cache_size", None)}
    # found by UUID: NVML's index need not match CUDA's (CUDA_VISIBLE_DEVICES, CUDA_DEVICE_ORDER)
    info["nvml"] = nvml.device_info(nvml.cuda_uuid(index), index)
    return info
