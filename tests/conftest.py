"""Fixtures shared by the whole test suite (keep this small; helpers specific to one package live in
its own tests/<package>/conftest.py)."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

# Without a GPU, Triton kernels run in Triton's interpreter on CPU tensors. Triton fixes its mode when it
# is first imported (transformers may import it during collection), so the variable is set before any
# test module loads; the triton dispatch backend then joins the equivalence tests on this machine too.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Wall time on a shared 2-core runner is noisy: hypothesis examples are limited by count, not by time.
settings.register_profile("moebench", deadline=None)
settings.load_profile("moebench")


@pytest.fixture
def seeded() -> int:
    """Seed torch's global generator so a test's random tensors are the same on every run."""
    torch.manual_seed(0)
    return 0


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A real 64 KiB tmpfs (a disk that fills up), mounted for one test; skipped where mounting is not
    allowed (it needs root)."""
    import subprocess

    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
