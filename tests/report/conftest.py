"""Fixtures of the report tests; the record builders live in report_records.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from report_records import mixed_cases, write_run


@pytest.fixture
def mixed_run(tmp_path) -> Path:
    return write_run(tmp_path / "quick-20260102-030405-cpu.jsonl", mixed_cases())
