"""The wording every finding shares: T counted the same way in a case's situation and in the
conditions, and the thread count in good grammar."""

from __future__ import annotations

from findings_records import frame, timed

from moebench.report.findings.describe import conditions, situation


def _batched(tmp_path, threads: int = 2):
    record = timed("variant=hash", {"variant": "hash"}, 0.01, tokens=256, spec={"variant": "hash"})
    record["workload"]["batch"] = 4
    record["timing"]["threads"] = threads
    return frame(tmp_path, [record])


def test_situation_and_conditions_state_the_same_t_batch_included(tmp_path):
    df = _batched(tmp_path)
    # 256 tokens x batch 4 = 1024 tokens a step, in both places
    assert situation(df.iloc[0]) == "forward, T=1024, float32"
    assert "T=1024" in conditions(df)


def test_one_thread_is_singular(tmp_path):
    assert "1 thread," in conditions(_batched(tmp_path, threads=1))
    assert "2 threads," in conditions(_batched(tmp_path, threads=2))
