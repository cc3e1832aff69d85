"""Memory findings: the measured peak against the analytic activation upper bound, per mode."""

from __future__ import annotations

from findings_records import frame, timed

from moebench.report.findings.memory import peak_against_bound

MiB = 2**20


def _measured(backend: str, peak_mib: float, bound_mib: float, mode: str = "forward") -> dict:
    return timed(f"backend={backend},mode={mode}", {"backend": backend, "mode": mode}, 0.01, mode=mode,
                 spec={"backend": backend},
                 metrics={"peak_bytes": peak_mib * MiB, "predicted_activation_bytes_upper": bound_mib * MiB})


def test_per_mode_the_bound_held_or_the_largest_excess_is_named(tmp_path):
    df = frame(tmp_path, [_measured("loop", 1, 4), _measured("sort_gather", 2, 3),
                          _measured("loop", 10, 4, mode="train_step"),
                          _measured("sort_gather", 3, 3.5, mode="train_step")], kind="memory")
    forward, train = peak_against_bound(df)
    assert forward.text == ("forward, T=256, float32: the measured peak stayed within the analytic activation upper "
                            "bound in all 2 cases; the loosest is loop, peak 1 MiB against a bound of "
                            "4 MiB (3 MiB to spare).")
    # the bound covers a forward's activations only: no verdict for a training step
    assert not train.answered
    assert train.text == ("train_step, T=256, float32: the analytic activation upper bound covers a forward's "
                          "activations only (not gradients or optimizer state), so no verdict on it is given for "
                          "this mode; its 2 cases peaked at 3 MiB (sort_gather) to 10 MiB (loop).")
    assert forward.figure == train.figure == "memory" and "train_step" in train.conditions


def test_memory_of_a_run_whose_cases_all_failed_is_said_unanswered(tmp_path):
    df = frame(tmp_path, [timed("a", {"variant": "hash"}, 0.01, status="error", error="boom")], kind="memory")
    (finding,) = peak_against_bound(df)
    assert not finding.answered and "no case finished" in finding.text


def test_results_without_the_bound_say_so(tmp_path):
    df = frame(tmp_path, [timed("a", {"variant": "hash"}, 0.01)], kind="memory")  # peak_bytes only
    (finding,) = peak_against_bound(df)
    assert not finding.answered and "predicted_activation_bytes_upper" in finding.text


def test_a_mode_with_one_case_says_so_instead_of_all_1_cases(tmp_path):
    (finding,) = peak_against_bound(frame(tmp_path, [_measured("loop", 5, 4, mode="train_step")], kind="memory"))
    assert finding.text == ("train_step, T=256, float32: the analytic activation upper bound covers a forward's "
                            "activations only (not gradients or optimizer state), so no verdict on it is given for "
                            "this mode; its one case, loop, peaked at 5 MiB.")


def test_a_forward_backward_peak_within_the_bound_gets_no_within_verdict(tmp_path):
    (finding,) = peak_against_bound(frame(tmp_path, [_measured("loop", 1, 4, mode="forward_backward")],
                                          kind="memory"))
    assert not finding.answered and "stayed within" not in finding.text
    assert finding.text.startswith("forward_backward, T=256, float32: the analytic activation upper bound covers a "
                                   "forward's activations only")

