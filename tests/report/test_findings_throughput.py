"""Throughput findings: the fastest routed layer per dtype/T/mode against the dense FFN of equal active
parameters, and the spread between hot paths; numbers checked against a hand count."""

from __future__ import annotations

from findings_records import frame, timed

from moebench.report.findings.throughput import fastest_backend, hot_path_spread


def _layer(backend: str, latency: float, dtype: str = "float32", **kwargs) -> dict:
    return timed(f"variant=token_choice,backend={backend},dtype={dtype}",
                 {"variant": "token_choice", "backend": backend, "dtype": dtype}, latency,
                 spec={"backend": backend, "dtype": dtype}, **kwargs)


def _dense(baseline: str, latency: float, dtype: str = "float32") -> dict:
    return timed(f"baseline={baseline},dtype={dtype}", {"baseline": baseline, "dtype": dtype}, latency,
                 spec={"variant": "dense", "dtype": dtype, "d_ff": 256})


def test_the_fastest_routed_layer_is_named_with_its_ratio_to_the_equal_active_dense_ffn(tmp_path):
    df = frame(tmp_path, [
        _layer("loop", 0.04), _layer("sort_gather", 0.01), _layer("grouped_mm", 0.008),
        _dense("equal_active", 0.005), _dense("equal_total", 0.001),  # faster still, but not a routed layer
        timed("variant=peer", {"variant": "peer"}, 0.0001, spec={"variant": "peer"}),  # not a dispatch backend
        _layer("sort_gather", 0.02, dtype="bfloat16"), _dense("equal_active", 0.01, dtype="bfloat16"),
    ], kind="throughput")
    f32, bf16 = fastest_backend(df)
    # 256 tokens / 0.008 s = 32000 tokens/s; dense: 256 / 0.005 = 51200; ratio 0.625
    assert f32.text == ("forward, T=256, float32, d_model 64: the fastest of 3 routed layers with "
                        "active width 256 (K·F + shared) is token_choice/grouped_mm at 32k tokens/s, 0.625× "
                        "the dense FFN of equal active parameters (51.2k tokens/s).")
    assert f32.answered and f32.figure == "throughput"
    assert f32.conditions == "float32, T=256, forward, 2 threads, cpu timer, device cpu"
    assert "the only routed layer with active width 256 (K·F + shared) is token_choice/sort_gather" in bf16.text
    assert "0.5× the dense FFN" in bf16.text
    assert bf16.conditions.startswith("bfloat16, T=256")


def test_without_a_dense_baseline_the_fastest_is_named_and_the_ratio_is_said_missing(tmp_path):
    df = frame(tmp_path, [_layer("loop", 0.04), _layer("sort_gather", 0.01)], kind="throughput")
    fastest, missing = fastest_backend(df)
    assert fastest.answered and "token_choice/sort_gather" in fastest.text and "25.6k tokens/s" in fastest.text
    assert "the slowest, token_choice/loop, reaches 6.4k tokens/s" in fastest.text
    assert not missing.answered and "No dense FFN of equal active parameters" in missing.text


def test_routed_layers_of_equal_speed_tie_instead_of_one_being_named_the_fastest(tmp_path):
    (finding, _) = fastest_backend(frame(tmp_path, [_layer("loop", 0.01), _layer("sort_gather", 0.01)],
                                         kind="throughput"))
    assert finding.text == "forward, T=256, float32, d_model 64: the 2 routed layers tie at 25.6k tokens/s."


def test_a_run_whose_cases_all_failed_says_no_layer_is_the_fastest(tmp_path):
    df = frame(tmp_path, [timed("a", {"variant": "hash"}, 0.01, status="error", error="boom")], kind="throughput")
    (finding,) = fastest_backend(df)
    assert not finding.answered and "No case finished" in finding.text


def test_hot_path_spread_names_the_fastest_and_the_slowest_and_their_ratio(tmp_path):
    df = frame(tmp_path, [_layer("sort_gather", 0.01), _layer("grouped_mm", 0.03), _layer("padded", 0.05),
                          _layer("loop", 0.001, mode="forward_backward")], kind="ci")  # alone in its mode
    (finding,) = hot_path_spread(df)
    assert finding.text == ("forward, T=256, float32: of 3 hot paths the fastest is token_choice/sort_gather at "
                            "10 ms per step and the slowest is token_choice/padded at 50 ms, 5× the fastest.")


def test_hot_path_spread_of_one_case_says_it_cannot_be_computed(tmp_path):
    (finding,) = hot_path_spread(frame(tmp_path, [_layer("sort_gather", 0.01)], kind="ci"))
    assert not finding.answered and "no two hot paths finished under the same dtype, T and mode" in finding.text


def test_hot_paths_that_take_the_same_time_tie_instead_of_naming_one_case_twice(tmp_path):
    df = frame(tmp_path, [_layer("sort_gather", 0.01), _layer("grouped_mm", 0.01)], kind="ci")
    (finding,) = hot_path_spread(df)
    assert finding.text == "forward, T=256, float32: of 2 hot paths all take 10 ms per step: they tie."


def _forced(routing: str, latency: float) -> dict:
    record = timed(f"routing={routing}", {"routing": routing, "capacity_factor": 1.0}, latency,
                   spec={"capacity_factor": 1.0})
    record["workload"]["routing"] = routing
    return record


def test_dense_baselines_are_never_hot_paths_and_forced_routings_only_in_a_ci_run(tmp_path):
    df = frame(tmp_path, [_layer("sort_gather", 0.01), _layer("padded", 0.04), _dense("equal_total", 0.2),
                          _dense("equal_active", 0.005), _forced("zipf", 0.001)], kind="mixed")
    (finding,) = hot_path_spread(df)
    # by hand: sort_gather 10 ms and padded 40 ms; the 200 ms dense FFN and the 1 ms zipf case are not hot paths
    assert finding.text == ("forward, T=256, float32: of 2 hot paths (2 dense baselines and 1 forced-routing case "
                            "left out) the fastest is token_choice/sort_gather at 10 ms per step and the slowest is "
                            "token_choice/padded at 40 ms, 4× the fastest.")
    # in a ci run, where the suite forces its deterministic routing, a forced-routing case is a hot path
    (ci,) = hot_path_spread(frame(tmp_path, [_layer("sort_gather", 0.01), _forced("uniform", 0.02)], kind="ci"))
    assert ci.text.startswith("forward, T=256, float32: of 2 hot paths the fastest is token_choice/sort_gather")


def test_a_layer_alone_without_a_baseline_and_synthetic_routings_make_no_sentence(tmp_path):
    df = frame(tmp_path, [
        _layer("sort_gather", 0.01), _layer("grouped_mm", 0.02),
        _layer("loop", 0.001, mode="forward_backward"),  # alone in its mode, no baseline: nothing to compare
        timed("routing=uniform,cf=1", {"routing": "uniform", "capacity_factor": 1.0}, 0.0001),  # a drop study's
        timed("routing=uniform,cf=2", {"routing": "uniform", "capacity_factor": 2.0}, 0.0002),  # cases
    ], kind="throughput")
    df.loc[df["case_id"].str.startswith("routing=uniform"), "workload.routing"] = "uniform"
    fastest, missing = fastest_backend(df)
    assert fastest.text.startswith("forward, T=256, float32, d_model 64: the fastest of 2 routed layers is "
                                   "token_choice/sort_gather at 25.6k tokens/s")
    assert not missing.answered


def test_a_layer_with_other_active_parameters_is_not_compared_with_the_equal_active_dense_ffn(tmp_path):
    top_1 = timed("variant=sinkhorn,top_k=1", {"variant": "sinkhorn", "top_k": 1}, 0.001,
                  spec={"variant": "sinkhorn", "top_k": 1})  # the fastest, but half the active width (128)
    df = frame(tmp_path, [_layer("sort_gather", 0.01), _layer("grouped_mm", 0.008), top_1,
                          _dense("equal_active", 0.005)], kind="throughput")  # dense width 256 = 2 x 128
    (finding,) = fastest_backend(df)
    assert "token_choice/grouped_mm at 32k tokens/s, 0.625× the dense FFN" in finding.text


def test_an_infinite_latency_is_no_hot_path(tmp_path):
    cases = [timed(f"variant=token_choice,backend={b}", {"variant": "token_choice", "backend": b}, t,
                   spec={"backend": b}) for b, t in (("loop", 0.02), ("sort_gather", 0.01), ("padded", 0.03))]
    df = frame(tmp_path, cases, kind="ci")
    df.loc[df["case_id"].str.contains("padded"), "latency_s"] = float("inf")  # a hand-edited 'Infinity'
    (finding,) = hot_path_spread(df)
    assert "slowest is token_choice/loop at 20 ms" in finding.text and "?" not in finding.text
