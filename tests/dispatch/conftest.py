"""Dispatch tests run tiny tensors: one intra-op thread is faster than two and does not stall when
the machine is busy (thread pools spin-wait under contention)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
