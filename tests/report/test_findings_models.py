"""Model findings: one sentence per preset, a preset that did not finish says so."""

from __future__ import annotations

from findings_records import frame, timed

from moebench.report.findings.models import preset_speed


def test_each_preset_gets_its_latency_speed_and_fraction_of_ceiling(tmp_path):
    df = frame(tmp_path, [
        timed("preset=mixtral-8x7b", {"preset": "mixtral-8x7b"}, 0.1, tokens=128, metrics={"frac_of_ceiling": 0.35}),
        timed("preset=deepseek-v2", {"preset": "deepseek-v2"}, 0.1, status="error", error="MemoryError: 22 GB\nmore"),
    ], kind="models")
    mixtral, deepseek = preset_speed(df)
    # 128 tokens / 0.1 s = 1280 tokens/s
    assert mixtral.text == ("mixtral-8x7b (forward, T=128, float32): 100 ms per step, 1.28k tokens/s, its experts at "
                            "35% of the dense-GEMM ceiling measured in the same run.")
    assert mixtral.answered
    assert not deepseek.answered
    assert deepseek.text == "deepseek-v2: the case did not finish (error: MemoryError: 22 GB), so it has no speed."


def test_with_several_presets_the_closest_and_farthest_from_the_ceiling_are_named(tmp_path):
    df = frame(tmp_path, [
        timed(f"preset={name}", {"preset": name}, 0.1, tokens=128, metrics={"frac_of_ceiling": frac})
        for name, frac in (("mixtral-8x7b", 0.35), ("deepseek-v2-lite", 0.03), ("qwen2-57b-a14b", 0.2))
    ], kind="models")
    *per_preset, summary = preset_speed(df)
    assert len(per_preset) == 3
    assert summary.text == ("forward, T=128, float32: of 3 presets, mixtral-8x7b runs its experts closest to the "
                            "dense-GEMM ceiling (35%) and deepseek-v2-lite farthest (3%).")
