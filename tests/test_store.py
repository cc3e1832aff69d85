"""Results files: append-safe records, a cut last line set aside, one writer at a time, loading into pandas."""

import errno
import json
import os

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
    with pytest.warns(UserWarning, match="unfinished last line"):
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


def case(case_id, status="ok"):
    return {"type": "case", "case_id": case_id, "status": status}


def test_an_append_after_a_torn_line_starts_a_new_line_and_the_torn_bytes_are_kept(tmp_path):
    path = tmp_path / "run.jsonl"
    writer = ResultWriter(path)
    writer.append(case("a"))
    torn = b'{"schema": 1, "type": "case", "case_id": "b", "sta'
    with path.open("ab") as f:
        f.write(torn)  # a kill mid-write
    with pytest.warns(UserWarning, match=r"run.jsonl.* moved to .*run.jsonl.torn"):
        writer.append(case("c"))
    assert [r["case_id"] for r in read_records(path)] == ["a", "c"]
    assert finished_case_ids(path) == {"a", "c"}
    assert (tmp_path / "run.jsonl.torn").read_bytes() == torn + b"\n"


def test_readers_report_an_unfinished_last_line_instead_of_dropping_it_silently(tmp_path):
    path = tmp_path / "run.jsonl"
    ResultWriter(path).append(case("a"))
    with path.open("a") as f:
        f.write('{"schema": 1, "type": "ca')
    with pytest.warns(UserWarning, match=r"run.jsonl:2: an unfinished last line"):
        assert [r["case_id"] for r in read_records(path)] == ["a"]


def test_a_last_record_missing_only_its_newline_is_kept_and_terminated(tmp_path):
    path = tmp_path / "run.jsonl"
    path.write_text(json.dumps({"schema": 1, **case("a")}))
    ResultWriter(path).append(case("b"))
    assert [r["case_id"] for r in read_records(path)] == ["a", "b"]
    assert not (tmp_path / "run.jsonl.torn").exists()


@pytest.mark.parametrize("line, message", [
    ("[1, 2]", "not a JSON record (a JSON list, not an object)"),
    ('"text"', "not a JSON record (a JSON str, not an object)"),
    ('{"schema": 1, "case_id": "a"}', "record without a 'type'"),
    ('{"schema": 1, "type": "case", "status": "ok"}', "case record without a 'case_id'"),
    ("\udcff", "not a JSON record (not valid JSON)"),
])
def test_a_line_that_is_not_a_record_is_a_value_error_naming_file_and_line(tmp_path, line, message):
    path = tmp_path / "run.jsonl"
    path.write_bytes(json.dumps({"schema": 1, "type": "run"}).encode() + b"\n"
                     + line.encode(errors="surrogateescape") + b"\n")
    with pytest.raises(ValueError, match=f"run.jsonl:2: {message}".replace("(", r"\(").replace(")", r"\)")):
        finished_case_ids(path)


def short_write_then_enospc(real_write):
    """os.write as a disk that fills up mid-record: half the bytes, then ENOSPC."""
    calls = []

    def write(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[:len(data) // 2]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return write


def test_a_short_write_then_a_full_disk_leaves_no_partial_record_and_names_the_file(tmp_path, monkeypatch):
    path = tmp_path / "run.jsonl"
    writer = ResultWriter(path)
    writer.append(case("a"))
    before = path.read_bytes()
    with monkeypatch.context() as patched:
        patched.setattr(os, "write", short_write_then_enospc(os.write))
        with pytest.raises(OSError, match=f"{path}.*No space left on device"):
            writer.append(case("b", "ok") | {"samples": {"latency_s": [0.1] * 100}})
    assert path.read_bytes() == before
    writer.append(case("c"))
    assert [r["case_id"] for r in read_records(path)] == ["a", "c"]


def test_a_full_tmpfs_is_an_error_naming_the_file_and_every_line_stays_a_whole_record(tiny_tmpfs):
    path = tiny_tmpfs / "run.jsonl"
    writer = ResultWriter(path)
    samples = {"latency_s": [0.123456789] * 200}  # ~2.6 KB per record: the 64 KiB fill up in ~25 appends
    with pytest.raises(OSError, match=f"{path}.*No space left on device") as failure:
        for i in range(100):
            writer.append(case(f"c{i}") | {"samples": samples})
    assert failure.value.errno == errno.ENOSPC
    text = path.read_text()
    assert text.endswith("\n")
    assert [r["case_id"] for r in read_records(path)] == [f"c{j}" for j in range(i)]


def test_a_second_writer_of_a_file_is_refused_naming_the_holder(tmp_path):
    path = tmp_path / "run.jsonl"
    first = ResultWriter(path)
    first.append(case("a"))
    with pytest.raises(ValueError, match=f"{path} is being written by another moebench run \\(pid {os.getpid()}"):
        ResultWriter(path)
    first.close()
    ResultWriter(path).append(case("b"))
    assert [r["case_id"] for r in read_records(path)] == ["a", "b"]


def test_the_last_record_of_a_case_supersedes_earlier_ones_for_every_reader(tmp_path):
    path = tmp_path / "run.jsonl"
    writer = ResultWriter(path)
    writer.append({"type": "run", "run_id": "r", "environment": {"threads": 1}})
    for record in (case("a", "error"), case("b", "ok"), case("c", "ok"), case("d", "timeout")):
        writer.append(record)
    writer.append({"type": "run", "run_id": "r", "environment": {"threads": 2}})  # a --resume
    writer.append(case("a", "ok"))
    writer.append(case("d", "crashed"))
    assert finished_case_ids(path) == {"a", "b", "c"}  # failures are run again by --resume
    frame = load_results(path)
    assert list(frame["case_id"]) == ["a", "b", "c", "d"]
    assert list(frame["status"]) == ["ok", "ok", "ok", "crashed"]
    assert list(frame["env.threads"]) == [2, 1, 1, 2]  # each record with the session that wrote it


def test_the_cli_turns_a_line_that_is_not_a_record_into_exit_2_naming_file_and_line(tmp_path):
    from click.testing import CliRunner

    from moebench.cli import cli

    path = tmp_path / "run.jsonl"
    path.write_text('{"schema": 1, "type": "run", "suite": "s"}\n[1, 2]\n')
    result = CliRunner().invoke(cli, ["compare", str(path), str(path)])
    assert result.exit_code == 2, result.output
    assert f"{path}:2: not a JSON record" in result.output


def test_a_new_file_whose_first_record_does_not_fit_is_removed_again(tmp_path, monkeypatch):
    path = tmp_path / "run.jsonl"
    writer = ResultWriter(path, exclusive=True)
    with monkeypatch.context() as patched:
        patched.setattr(os, "write", short_write_then_enospc(os.write))
        with pytest.raises(OSError, match="the new file was removed"):
            writer.append({"type": "run", "run_id": "r"})
    assert not path.exists()


def test_a_new_file_closed_before_its_first_record_is_removed_but_an_earlier_run_is_kept(tmp_path):
    new = tmp_path / "new.jsonl"
    ResultWriter(new, exclusive=True).close()  # a run stopped before its run record: nothing to read
    assert not new.exists()
    earlier = tmp_path / "earlier.jsonl"
    earlier.write_bytes(b"")
    ResultWriter(earlier).close()  # a file this writer did not create is never removed
    assert earlier.exists()
