"""Triton kernels run on CPU tensors through the Triton interpreter. Triton picks interpreter or
compiler when a kernel is defined (at import), and the triton dispatch backend checks the variable
when it runs, so TRITON_INTERPRET=1 is set while this folder is collected (its test modules import
the kernels) and again around each of its tests; it is restored after collection, so the rest of the
session sees this machine as it is (the dispatch suites decide at collection which backends run here).
Without triton this folder is not collected; if triton was imported (in compiler mode) before this
file ran, its tests skip and say so."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest
import torch

_INTERPRET = not torch.cuda.is_available()
_BEFORE = os.environ.get("TRITON_INTERPRET")
# Triton's own modules are built for one mode when triton is first imported: if something collected
# earlier (transformers, for one) imported it without the variable, the interpreter cannot run here.
_TOO_LATE = _INTERPRET and "triton" in sys.modules and _BEFORE != "1"
if _INTERPRET:
    os.environ["TRITON_INTERPRET"] = "1"

if importlib.util.find_spec("triton") is None:
    collect_ignore_glob = ["test_*.py"]


def pytest_collection_finish(session):
    if _INTERPRET:
        if _BEFORE is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = _BEFORE


@pytest.fixture(autouse=True)
def triton_interpreter(monkeypatch):
    if _TOO_LATE:
        pytest.skip("triton was imported before TRITON_INTERPRET=1 was set: set it in tests/conftest.py, "
                    "or run tests/kernels on its own")
    if _INTERPRET:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
