"""Lifelong findings: the step time and optimizer state freezing saves against full fine-tuning."""

from __future__ import annotations

from findings_records import frame, timed

from moebench.report.findings.lifelong import freezing_saving

MiB = 2**20


def _lifelong(experts: int, expand: int, latency: float, state_mib: float) -> dict:
    return timed(f"variant=lifelong,n_experts={experts},expand={expand}",
                 {"variant": "lifelong", "n_experts": experts, "expand": expand}, latency, mode="train_step",
                 expand=expand, spec={"variant": "lifelong", "n_experts": experts},
                 metrics={"optimizer_state_bytes": state_mib * MiB})


FULL = timed("variant=token_choice,n_experts=16", {"variant": "token_choice", "n_experts": 16}, 0.04,
             mode="train_step", spec={"n_experts": 16}, metrics={"optimizer_state_bytes": 4 * MiB})


def test_freezing_saves_step_time_and_optimizer_state_against_full_fine_tuning(tmp_path):
    df = frame(tmp_path, [_lifelong(8, 8, 0.03, 1), _lifelong(12, 4, 0.044, 3), FULL], kind="lifelong")
    half, quarter = freezing_saving(df)
    # 1 - 0.03/0.04 = 25% less time; 1 - 1/4 = 75% less state
    assert half.text == ("Freezing the 8 old experts of a layer grown to 16 (lifelong, expand 8) takes 30 ms per step "
                         "against 40 ms for fine-tuning all 16 of a token_choice layer in full (25% less) and holds "
                         "1 MiB of optimizer state against 4 MiB (75% less).")
    assert "(10% more)" in quarter.text and "3 MiB of optimizer state against 4 MiB (25% less)" in quarter.text
    assert half.answered and half.figure == "throughput" and "train_step" in half.conditions


def test_without_a_layer_of_the_same_size_the_saving_is_not_computed(tmp_path):
    df = frame(tmp_path, [_lifelong(8, 4, 0.03, 1), FULL], kind="lifelong")  # grown to 12, reference has 16
    (finding,) = freezing_saving(df)
    assert not finding.answered and "no full fine-tuning of a layer with 12 experts" in finding.text


def test_a_run_without_lifelong_cases_has_no_lifelong_finding(tmp_path):
    assert freezing_saving(frame(tmp_path, [FULL], kind="lifelong")) == []


def test_a_key_both_cases_lack_still_matches_the_full_fine_tuning(tmp_path):
    grown, full = _lifelong(8, 8, 0.03, 1), timed(FULL["case_id"], FULL["params"], 0.04, mode="train_step",
                                                   spec={"n_experts": 16}, metrics={"optimizer_state_bytes": 4 * MiB})
    for record in (grown, full):
        del record["spec"]["d_ff"]  # neither records d_ff; a third case does, so the column exists
    other = timed("variant=hash", {"variant": "hash"}, 0.01, spec={"variant": "hash"})
    (finding,) = freezing_saving(frame(tmp_path, [grown, full, other], kind="lifelong"))
    assert finding.answered and "(25% less)" in finding.text


def test_the_unfrozen_lifelong_layer_of_the_same_size_is_the_control_when_the_run_has_one(tmp_path):
    # the suite's own control: the lifelong layer at 16 experts, nothing frozen (same code as the grown one)
    unfrozen = timed("variant=lifelong,n_experts=16", {"variant": "lifelong", "n_experts": 16}, 0.06,
                     mode="train_step", spec={"variant": "lifelong", "n_experts": 16},
                     metrics={"optimizer_state_bytes": 4 * MiB})
    (finding,) = freezing_saving(frame(tmp_path, [FULL, _lifelong(8, 8, 0.03, 1), unfrozen], kind="lifelong"))
    # 1 - 0.03/0.06 = 50% less, not 25% against the token_choice layer
    assert "against 60 ms for fine-tuning all 16 of the same layer with nothing frozen in full (50% less)" \
        in finding.text
