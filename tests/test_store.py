"""Results files: append-safe records, a cut last line tolerated, loading into pandas."""

import pytest

from moebench.store import ResultWriter, finished_case_ids, load_results, read_records


def test_records_round_trip_and_load_into_a_dataframe(tmp_path):
    path = tmp_path / "run.jsonl"
    writer = ResultWriter(path)
    writer.append({"type": "run", "run_id": "r", "environment": {"threads": 2, "gpu": None}})
    writer.append({"type": "case", "run_id": "r", "suite": "s", "case_id": "a", "status": "ok",
                   "spec": {"n_experts": 8}, "workload": {"tokens": 64},
                   "metrics": {"latency_s": 0.5, "tokens_per_s": 128.0, "nan_metric": float("nan")},
                   "samples": {"latency_s": [0.4, 0.5, 0.6]}})
    frame = load_results(path)
    assert list(frame["case_id"]) == ["a"]
    row = frame.iloc[0]
    assert row["spec.n_experts"] == 8 and row["workload.tokens"] == 64 and row["env.threads"] == 2
    assert row["latency_s"] == 0.5 and row["samples"] == [0.4, 0.5, 0.6]
    assert row["nan_metric"] is None or row["nan_metric"] != row["nan_metric"]  # stored as null


def test_a_line_cut_by_a_kill_is_skipped_but_corruption_elsewhere_is_an_error(tmp_path):
    path = tmp_path / "run.jsonl"
    writer = ResultWriter(path)
    writer.append({"type": "case", "case_id": "a", "status": "ok"})
    with path.open("a") as f:
        f.write('{"schema": 1, "type": "case", "case_id": "b"')  # killed mid-write
    assert finished_case_ids(path) == {"a"}
    with path.open("a") as f:
        f.write('\n{"schema": 1, "type": "case", "case_id": "c", "status": "ok"}\n')
    with pytest.raises(ValueError, match="run.jsonl:2: not a JSON record"):
        list(read_records(path))


def test_other_schema_versions_are_refused(tmp_path):
    path = tmp_path / "old.jsonl"
    path.write_text('{"schema": 0, "type": "run"}\n')
    with pytest.raises(ValueError, match="schema 0"):
        list(read_records(path))


def test_load_results_errors_name_the_path(tmp_path):
    with pytest.raises(ValueError, match="no such results file"):
        load_results(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="no results"):
        load_results(tmp_path)
