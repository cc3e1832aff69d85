"""Compile a C source once with the system compiler and load it through ctypes (moebench's CPU kernels).

    lib = load("peer", SOURCE, {"peer_gather_dot": [ptr] * 4 + [i64] * 3 + [c_int]})   # CDLL or None

The shared object lands in a per-user cache directory (MOEBENCH_NATIVE_CACHE overrides it), named by a
hash of the source, the flags and the host: -march=native code must not travel to another CPU. It is
written under a temporary name and renamed into place, so no process loads half a file. A missing or
failing compiler gives None, and callers fall back to torch (as torch.compile's CPU backend also needs
a compiler). CC names another compiler.

Built with -fopenmp, a library needs libgomp.so.1, and the loader hands it the one torch already
loaded (same soname): `#pragma omp parallel` regions then run on torch's own worker threads. Threads of
our own would compete with torch's workers, which spin for a while after each parallel region
(measured for PEER's top-k: 8 ms slower per forward with pthreads).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import socket
import subprocess
import tempfile
from pathlib import Path

import torch

FLAGS = ["-O3", "-march=native", "-shared", "-fPIC", "-fopenmp"]  # no -ffast-math: keep IEEE sums
MAX_THREADS = 64  # the C sources' job arrays


def plain_cpu(*tensors: torch.Tensor) -> bool:
    """Whether C code may read these tensors' memory: each an ordinary CPU tensor (or Parameter), not a
    tensor subclass such as the fake tensors of moebench.measure.host_sync's probe (shapes, no data:
    reading their data_ptr would crash) or a functional wrapper, and not on the meta device."""
    return all(type(t) in (torch.Tensor, torch.nn.Parameter) and t.device.type == "cpu" for t in tensors)


def load(name: str, source: str, signatures: dict[str, list], extra_flags: list[str] = ()) -> ctypes.CDLL | None:
    """The compiled library with each named function's argtypes set, or None if it did not compile."""
    flags = [*FLAGS, *extra_flags]
    key = hashlib.sha256("\0".join([source, *flags, socket.gethostname(), platform.machine()]).encode())
    default = Path(tempfile.gettempdir()) / f"moebench_native_{os.getuid()}"
    cache = Path(os.environ.get("MOEBENCH_NATIVE_CACHE", default))
    lib = cache / f"{name}_{key.hexdigest()[:16]}.so"
    if not lib.exists():
        cache.mkdir(parents=True, exist_ok=True)
        src = cache / f"{lib.stem}.c"
        src.write_text(source)
        tmp = cache / f"{lib.stem}.{os.getpid()}.so"
        try:
            subprocess.run([os.environ.get("CC", "cc"), *flags, "-o", str(tmp), str(src), "-lm"], check=True,
                           capture_output=True, timeout=120)
        except (OSError, subprocess.SubprocessError):
            return None
        tmp.replace(lib)
    dll = ctypes.CDLL(str(lib))
    for function, argtypes in signatures.items():
        getattr(dll, function).argtypes = argtypes
    return dll


__all__ = ["FLAGS", "MAX_THREADS", "load", "plain_cpu"]
