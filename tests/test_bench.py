"""One case measured for real: the metric contract, forced routing, phases adding up."""

import math
import os
import shutil
import time

import pytest
import torch

from moebench.bench import run_case
from moebench.layers import build_layer
from moebench.measure.phases import phase_breakdown
from moebench.measure.timers import fixed_threads
from moebench.routing.capacity import expected_drop_fraction_uniform
from moebench.routing.distributions import forcing_logits, make_distribution
from moebench.spec import LayerSpec
from moebench.suite import Case, MeasurePlan, Workload

CONTRACT = ("latency_s", "tokens_per_s", "peak_bytes", "flops", "frac_of_ceiling", "drop_rate",
            "dropped_weight_frac", "tokens_dropped_frac", "load_max_over_mean", "load_cv", "dead_experts",
            "routing_frac")


def test_run_case_reports_every_contract_metric():
    spec = LayerSpec(d_model=32, d_ff=64, n_experts=4, top_k=2, capacity_factor=1.0)
    case = Case("c", {}, spec, Workload(tokens=64, routing="zipf", routing_params={"alpha": 1.5}),
                MeasurePlan(warmup=1, min_samples=3, max_samples=3, budget_s=0.05))
    record = run_case(case, "cpu", threads=1)
    metrics = record["metrics"]
    for name in CONTRACT:
        assert metrics.get(name) is not None, name
    assert len(record["samples"]["latency_s"]) == 3
    assert record["routing"]["name"] == "zipf" and record["routing"]["params"] == {"alpha": 1.5}
    assert metrics["drop_rate"] > 0  # zipf(1.5) overloads expert 0 at CF 1
    assert sum(record["loads"]) == round(64 * 2 * (1 - metrics["drop_rate"]))
    assert record["gpu"]["available"] is False


def test_forced_uniform_routing_drops_what_the_binomial_predicts():
    """T=4096, E=64, K=1, CF=1 (docs/formulas.md#capacity-and-drops: about 4.9%), through the real router + capacity."""
    T, E, K = 4096, 64, 1
    spec = LayerSpec(d_model=16, d_ff=16, n_experts=E, top_k=K, capacity_factor=1.0, backend="padded")
    layer = build_layer(spec).eval()
    dist = make_distribution("uniform", seed=3)
    rates = []
    with torch.no_grad():
        for step in range(8):
            layer.router.selection_offset_TE = forcing_logits(dist.sample(T, E, K, step=step), E)
            layer(torch.randn(T, 16))
            rates.append(layer.last_stats.summary()["drop_rate"])
    expected = expected_drop_fraction_uniform(T, E, K, 1.0)
    assert expected == pytest.approx(0.049, abs=0.001)
    mean = sum(rates) / len(rates)
    # the per-batch rate has sd ~0.3 points here; 8 batches: sd of the mean ~0.1 point
    assert mean == pytest.approx(expected, abs=0.005)


def test_phases_of_a_real_layer_add_up_to_its_uninstrumented_total():
    spec = LayerSpec(d_model=256, d_ff=512, n_experts=8, top_k=2, backend="sort_gather")
    layer = build_layer(spec).eval()
    x = torch.randn(2048, 256)

    def step():
        with torch.inference_mode():
            layer(x)

    # One thread and thread CPU time: the sum is then insensitive to other processes on a shared runner.
    with fixed_threads(1):
        breakdown = phase_breakdown(step, "cpu", repeats=7, clock=time.thread_time)
    assert set(breakdown.phases) >= {"router", "dispatch", "experts", "combine"}
    assert 0.9 <= breakdown.ratio <= 1.1, breakdown


def test_counters_do_not_depend_on_how_many_samples_were_taken():
    spec = LayerSpec(d_model=32, d_ff=64, n_experts=4, top_k=2, capacity_factor=1.0)
    work = Workload(tokens=64, routing="zipf", routing_params={"alpha": 1.0})
    records = [run_case(Case("c", {}, spec, work, MeasurePlan(warmup=1, min_samples=n, max_samples=n, budget_s=1,
                                                              phases=False, memory=False, ceiling=False)), "cpu", 1)
               for n in (3, 4)]
    assert records[0]["loads"] == records[1]["loads"]
    assert records[0]["metrics"]["drop_rate"] == records[1]["metrics"]["drop_rate"]
    assert [len(r["samples"]["cpu_s"]) for r in records] == [3, 4]  # per-step CPU time beside wall time


def test_injected_slowdown_is_recorded_and_costs_cpu_time(monkeypatch):
    from moebench.bench import injected_slowdown, injected_slowdown_fraction

    inner = []

    def work():
        t0 = time.process_time()
        sum(i * i for i in range(50000))
        inner.append(time.process_time() - t0)

    monkeypatch.setenv("MOEBENCH_INJECT_SLOWDOWN", "0.5")
    assert injected_slowdown_fraction() == 0.5
    slowed = injected_slowdown(work, 0.5)
    t0 = time.process_time()
    slowed()
    assert time.process_time() - t0 >= 1.45 * inner[-1]  # the step's own CPU time, and half again
    spec = LayerSpec(d_model=16, d_ff=16, n_experts=2, top_k=1)
    plan = MeasurePlan(warmup=1, min_samples=3, max_samples=3, phases=False, memory=False, ceiling=False)
    assert run_case(Case("c", {}, spec, Workload(tokens=8), plan), "cpu", 1)["injected_slowdown"] == 0.5
    monkeypatch.setenv("MOEBENCH_INJECT_SLOWDOWN", "lots")
    with pytest.raises(ValueError, match="MOEBENCH_INJECT_SLOWDOWN='lots'"):
        injected_slowdown_fraction()


class _FixedTimer:
    """Runs the work, reports a fixed duration: the ceiling's FLOP count can then be checked exactly."""

    mode = "fixed"

    def time(self, fn):
        fn()
        return 0.01


@pytest.mark.parametrize("activation,training", [("swiglu", False), ("gelu", False), ("swiglu", True)])
def test_dense_ffn_ceiling_counts_the_experts_gemms_only(activation, training):
    """Rate = the experts' GEMM FLOPs (T*K rows through w_in and w_out; training: x3 for the input and
    weight gradients) over the GEMMs' own times, one fixed 10 ms sample per GEMM shape."""
    from moebench.bench import dense_ffn_rate

    spec = LayerSpec(d_model=16, d_ff=24, n_experts=4, top_k=2, activation=activation)
    I = 48 if activation == "swiglu" else 24
    per_pass = 2 * 64 * 2 * (16 * I + 24 * 16)  # 64 tokens x K=2 rows
    n_gemms = 6 if training else 2
    rate = dense_ffn_rate(spec, 64, "cpu", training, _FixedTimer())
    assert rate == pytest.approx(per_pass * (3 if training else 1) / (0.01 * n_gemms))


def test_dispatch_bandwidth_is_the_accounted_bytes_over_the_dispatch_and_combine_phases():
    spec = LayerSpec(d_model=32, d_ff=64, n_experts=4, top_k=2, backend="sort_gather")
    case = Case("c", {}, spec, Workload(tokens=64), MeasurePlan(warmup=1, min_samples=3, max_samples=3, budget_s=0.05))
    metrics = run_case(case, "cpu", threads=1)["metrics"]
    from moebench import accounting

    predicted = accounting.layer_bytes(spec, 64)
    seconds = metrics["phase_dispatch_s"] + metrics["phase_combine_s"]
    assert metrics["dispatch_bytes_per_s"] == pytest.approx((predicted["dispatch"] + predicted["combine"]) / seconds)
    assert metrics["dispatch_frac_of_bandwidth"] == pytest.approx(
        metrics["dispatch_bytes_per_s"] / metrics["copy_bandwidth_bytes_per_s"])


def test_cuda_graph_request_on_cpu_runs_eagerly_and_says_why():
    spec = LayerSpec(d_model=32, d_ff=64, n_experts=4, top_k=2, capacity_factor=1.25, backend="padded")
    case = Case("c", {}, spec, Workload(tokens=32, cuda_graph=True),
                MeasurePlan(warmup=1, min_samples=3, max_samples=3, budget_s=0.05, memory=False, ceiling=False))
    record = run_case(case, "cpu", threads=1)
    assert record["cuda_graph"] == {"requested": True, "used": False, "why": "not on CUDA"}
    assert "phase_experts_s" in record["metrics"]  # eager: phases are timed as usual
    assert "cuda_graph" not in run_case(Case("c", {}, spec, Workload(tokens=32), case.measure), "cpu", 1)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: graph capture")
@pytest.mark.parametrize("backend,capacity_factor,used", [("padded", 1.25, True), ("sort_gather", None, False)])
def test_cuda_graph_replays_sync_free_layers_only(backend, capacity_factor, used):
    spec = LayerSpec(d_model=64, d_ff=128, n_experts=8, top_k=2, capacity_factor=capacity_factor, backend=backend,
                     dtype="bfloat16")
    case = Case("c", {}, spec, Workload(tokens=256, cuda_graph=True, routing="zipf", routing_params={"alpha": 1.2}),
                MeasurePlan(warmup=2, min_samples=5, max_samples=5, budget_s=0.5, memory=False, ceiling=False))
    record = run_case(case, "cuda", threads=1)
    assert record["cuda_graph"]["used"] is used, record["cuda_graph"]
    assert len(record["samples"]["latency_s"]) == 5 and min(record["samples"]["latency_s"]) > 0
    assert ("phase_experts_s" in record["metrics"]) is not used  # a replayed graph has no phases
    if not used:
        assert "host" in record["cuda_graph"]["why"]


# --- the record's "code": which code ran each step, seen at the call sites ------------------------------

QUICK = MeasurePlan(warmup=1, min_samples=2, max_samples=2, budget_s=0.05, phases=False, memory=False, ceiling=False)


def code_of(spec: LayerSpec, tokens: int = 32) -> dict[str, str]:
    return run_case(Case("c", {}, spec, Workload(tokens=tokens), QUICK), "cpu", threads=1)["code"]


@pytest.mark.skipif(not shutil.which(os.environ.get("CC") or "cc"), reason="no C compiler on PATH (or CC)")
def test_sort_gather_on_cpu_records_the_c_kernels_it_ran():
    fp32 = LayerSpec(d_model=32, d_ff=64, n_experts=4, top_k=2, backend="sort_gather")
    assert code_of(fp32) == {"sort": "native_c", "experts": "torch", "swiglu": "native_c", "combine": "native_c"}
    bf16 = LayerSpec(d_model=32, d_ff=64, n_experts=4, top_k=2, backend="sort_gather", dtype="bfloat16")
    assert code_of(bf16) == {"sort": "native_c", "experts": "onednn", "swiglu": "native_c", "combine": "native_c"}


def test_sort_gather_records_torch_when_the_c_kernels_are_unavailable(monkeypatch):
    from moebench.kernels import dispatch_native

    monkeypatch.setattr(dispatch_native, "available", lambda: False)
    spec = LayerSpec(d_model=32, d_ff=64, n_experts=4, top_k=2, backend="sort_gather", activation="gelu")
    assert code_of(spec) == {"sort": "torch", "experts": "torch", "gelu": "torch", "combine": "torch"}


def test_training_records_the_torch_path_autograd_takes():
    spec = LayerSpec(d_model=32, d_ff=64, n_experts=4, top_k=2, backend="sort_gather")
    record = run_case(Case("c", {}, spec, Workload(tokens=32, mode="forward_backward"), QUICK), "cpu", threads=1)
    assert record["code"] == {"sort": "torch", "experts": "torch", "swiglu": "torch", "combine": "torch"}


def test_peer_records_each_of_its_steps():
    from moebench.kernels import peer_native

    spec = LayerSpec(variant="peer", d_model=24, peer_experts=16**2, peer_heads=2, peer_k=4, d_key=12,
                     activation="gelu")
    native = "native_c" if peer_native.available() else "torch"
    assert code_of(spec) == {"query": "torch", "subkey_scores": "torch", "candidate_topk": native,
                             "gather_experts": native}


def test_a_dense_baseline_and_shared_experts_record_torch():
    assert code_of(LayerSpec(d_model=32, d_ff=64, variant="dense", activation="relu")) == {"experts": "torch",
                                                                                         "relu": "torch"}
    shared = LayerSpec(d_model=32, d_ff=64, n_experts=4, top_k=2, variant="deepseek", n_shared=1, backend="loop")
    assert code_of(shared) == {"experts": "torch", "swiglu": "torch", "combine": "torch", "shared": "torch"}


def test_the_triton_backend_records_the_interpreter_on_cpu():
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        pytest.skip("on a GPU machine the triton backend compiles its kernels")
    spec = LayerSpec(d_model=16, d_ff=16, n_experts=2, top_k=1, backend="triton")
    assert code_of(spec, tokens=8) == {"sort": "torch", "experts": "triton_interpreter",
                                       "swiglu": "triton_interpreter", "combine": "torch"}


@pytest.mark.parametrize("backend", ["sort_gather", "padded"])
def test_computed_flops_count_the_rows_the_experts_multiplied(backend):
    """Useful `flops` count every assignment once; `computed_flops` the kept ones (sort_gather) or every
    E*C slot, empty ones included (padded); frac_of_ceiling credits the expert work that ran."""
    T, E, K, D, F = 64, 4, 2, 32, 64
    spec = LayerSpec(d_model=D, d_ff=F, n_experts=E, top_k=K, capacity_factor=0.5, backend=backend)
    case = Case("c", {}, spec, Workload(tokens=T, routing="zipf", routing_params={"alpha": 1.5}),
                MeasurePlan(warmup=1, min_samples=3, max_samples=3, budget_s=0.05))
    metrics = run_case(case, "cpu", threads=1)["metrics"]
    per_row = 2 * 3 * D * F  # swiglu: gate, up and down matrices, multiply-add = 2
    C = math.ceil(0.5 * T * K / E)
    kept = round(T * K * (1 - metrics["drop_rate"]))
    rows = E * C if backend == "padded" else kept
    assert metrics["drop_rate"] > 0
    assert metrics["computed_flops"] == pytest.approx(metrics["flops"] - (T * K - rows) * per_row)
    rate = (T * K * per_row + metrics["computed_flops"] - metrics["flops"]) / metrics["latency_s"]
    assert metrics["frac_of_ceiling"] == pytest.approx(rate / metrics["ceiling_flops_per_s"])


def test_computed_flops_of_a_dropless_layer_are_its_flops():
    spec = LayerSpec(d_model=32, d_ff=64, n_experts=4, top_k=2, backend="grouped_mm")
    case = Case("c", {}, spec, Workload(tokens=32), MeasurePlan(warmup=1, min_samples=3, max_samples=3, budget_s=0.05))
    metrics = run_case(case, "cpu", threads=1)["metrics"]
    assert metrics["computed_flops"] == pytest.approx(metrics["flops"])
