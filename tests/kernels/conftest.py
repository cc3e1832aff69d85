"""Triton kernels run on CPU tensors through the Triton interpreter, which triton reads when a kernel
is defined: so the variable is set here, at collection, before any test module imports triton.
(Collection ends before any test runs, so the rest of the session sees it too: the triton dispatch
backend then joins the dispatch equivalence suites.) Without triton this folder is not collected."""

from __future__ import annotations

import importlib.util
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

if importlib.util.find_spec("triton") is None:
    collect_ignore_glob = ["test_*.py"]
