"""Measure one case: build the layer from its spec, time it, and collect every metric.

Runs inside the runner's worker process. Returns the `metrics` / `samples` / `phases` / `memory` /
`routing` / `code` parts of a case record (store.py); the runner adds identity and status.
Axis legend: B batch, T tokens per batch element, D model dim, E experts, K experts per token.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Any

import torch

from moebench import accounting
from moebench.dispatch.common import torch_dtype
from moebench.layers import build_layer
from moebench.measure.ceilings import copy_bandwidth, gemm_samples
from moebench.measure.code_path import recording
from moebench.measure.host_sync import first_host_sync
from moebench.measure.memory import peak_memory
from moebench.measure.nvml import NvmlSampler, cuda_uuid
from moebench.measure.phases import phase_breakdown
from moebench.measure.timers import make_timer, measure
from moebench.routing.distributions import describe, forcing_logits, make_distribution
from moebench.suite import Case

# Phases that are routing overhead rather than expert compute (routing_frac: docs/results.md#metric-contract).
ROUTING_PHASES = ("router", "dispatch", "combine", "query", "subkey_scores", "candidate_topk")


def run_case(case: Case, device: str, threads: int) -> dict[str, Any]:
    spec, work, plan = case.spec, case.workload, case.measure
    torch.manual_seed(work.seed)
    layer = build_layer(spec).to(device)
    if work.expand:
        if not hasattr(layer, "expand"):
            raise ValueError(f"workload.expand={work.expand}: variant {spec.variant!r} cannot add experts")
        layer.expand(work.expand)
        spec = layer.spec  # E grew
    training = work.mode in ("forward_backward", "train_step")
    layer.train(training)
    trainable = [p for p in layer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5) if work.mode == "train_step" else None
    dtype = torch_dtype(spec.dtype)
    B, T, D = work.batch, work.tokens, spec.d_model
    n_tokens = B * T

    gen = torch.Generator().manual_seed(work.seed)
    inputs = [torch.randn(B, T, D, generator=gen).to(device=device, dtype=dtype)
              for _ in range(work.input_variants)]
    token_ids = [torch.randint(0, 32000, (B, T), generator=gen).to(device) for _ in range(work.input_variants)]
    offsets, routing_info = _synthetic_routing(case, spec, layer, n_tokens, device)
    _set_collect_stats(layer, False)  # routing statistics are collected once, after timing

    state = {"step": 0}

    def setup() -> None:
        """Untimed: pick the next input (and forced routing) so iterations see varied routing."""
        state["step"] += 1
        i = state["step"] % work.input_variants
        state["x"], state["ids"] = inputs[i], token_ids[i]
        if offsets is not None:
            layer.router.selection_offset_TE = offsets[i]
        if training:
            layer.zero_grad(set_to_none=True)

    def step() -> None:
        if training:
            y = layer(state["x"], token_ids=state["ids"])
            loss = y.float().square().mean()  # a real backward through experts and router
            if hasattr(layer, "aux_loss"):
                loss = loss + layer.aux_loss()  # and through the aux losses, as training does
            loss.backward()
            if optimizer is not None:
                optimizer.step()
        else:
            with torch.inference_mode():
                layer(state["x"], token_ids=state["ids"])

    timer = make_timer(device)
    graph_record, graph_step, graph_setup = (_cuda_graph(layer, device, training, inputs, token_ids, offsets,
                                                          setup, state) if work.cuda_graph else (None, None, None))
    timed_step, timed_setup = (graph_step, graph_setup) if graph_step is not None else (step, setup)
    cpu_s: list[float] = []
    slowdown = injected_slowdown_fraction()
    with _gpu_sampler(device) as gpu:  # clocks, power, energy, throttling while the samples run
        samples = measure(cpu_recorded(injected_slowdown(timed_step, slowdown), cpu_s), timer, warmup=plan.warmup,
                          min_samples=plan.min_samples, max_samples=plan.max_samples, budget_s=plan.budget_s,
                          rel_ci_target=plan.rel_ci, setup=timed_setup)
    record: dict[str, Any] = {"samples": {"latency_s": samples.raw, "cpu_s": cpu_s[plan.warmup:]},
                              "timing": {k: v for k, v in samples.to_dict().items() if k != "raw"},
                              "routing": routing_info, "gpu": gpu.summary}
    if graph_record is not None:
        record["cuda_graph"] = graph_record
    if slowdown:
        record["injected_slowdown"] = slowdown  # a testing hook was on: never a real measurement
    metrics = _throughput_metrics(spec, samples.median, n_tokens, training)
    metrics["trainable_params"] = sum(p.numel() for p in trainable)
    metrics["params"] = sum(p.numel() for p in layer.parameters())
    if optimizer is not None:
        metrics["optimizer_state_bytes"] = sum(t.numel() * t.element_size() for st in optimizer.state.values()
                                               for t in st.values() if torch.is_tensor(t))
    flops = accounting.layer_flops_per_token(spec)
    routing_flops = flops.get("router", 0.0) + flops.get("combine", 0.0)
    metrics["analytic_routing_flop_share"] = routing_flops / sum(flops.values())

    _set_collect_stats(layer, True)
    state["step"] = 0  # the same input whatever the sample count, so counters compare exactly across runs
    setup()
    with recording() as code:  # which code each step ran (native C, oneDNN, torch, ...), seen at its call site
        step()  # one more forward, untimed, for its routing statistics
    record["code"] = code
    _set_collect_stats(layer, False)
    stats = getattr(layer, "last_stats", None)
    if stats is not None:
        metrics.update(stats.summary())
        record["loads"] = stats.kept_load_E.tolist() if stats.kept_load_E.numel() <= 4096 else None
        metrics["capacity"] = stats.capacity
    cap = accounting.capacity_report(spec, n_tokens)
    metrics["expected_drop_rate_uniform"] = cap["expected_drop_fraction"]
    if stats is not None and stats.capacity:
        # padded capacity buffers: the fraction of the E*C slots that hold no assignment
        metrics["padding_waste"] = 1 - stats.kept_load_E.sum().item() / (stats.load_E.numel() * stats.capacity)
    metrics["computed_flops"] = accounting.layer_computed_flops(spec, n_tokens, _expert_rows(spec, stats, n_tokens),
                                                                training)

    if plan.phases and graph_step is None:  # a replayed graph has no phases to time
        breakdown = phase_breakdown(step, device, repeats=5, setup=setup)
        record["phases"] = breakdown.to_dict()
        for name, seconds in breakdown.phases.items():
            metrics[f"phase_{name}_s"] = seconds
        phase_sum = sum(breakdown.phases.values())
        routing_s = sum(breakdown.phases.get(p, 0.0) for p in ROUTING_PHASES)
        metrics["routing_frac"] = routing_s / phase_sum if phase_sum > 0 else None
        metrics["phase_sum_over_total"] = breakdown.ratio

    if plan.memory:
        setup()
        with _quiet_stderr():  # torch's profiler (used for CPU peaks) prints start/stop lines on fd 2
            peak = peak_memory(step, device)
        record["memory"] = peak.to_dict()
        metrics["peak_bytes"] = peak.peak_bytes
        predicted = accounting.layer_bytes(spec, n_tokens)
        metrics["predicted_bytes_moved"] = sum(predicted.values())
        metrics["predicted_dispatch_bytes"] = predicted.get("dispatch", 0.0)
        activations = accounting.layer_activation_bytes(spec, n_tokens)
        record["memory"]["predicted_activation_bytes"] = activations
        metrics["predicted_activation_bytes_upper"] = sum(activations.values())
        metrics["weight_bytes"] = sum(p.numel() * p.element_size() for p in layer.parameters())

    if plan.ceiling:
        metrics.update(_ceiling_metrics(spec, device, metrics, n_tokens, training, timer))
    record["metrics"] = metrics
    return record


def cpu_recorded(step, out: list[float]):
    """step, appending the process CPU time of every call to out (warm-up calls first). Load from other
    processes stretches wall time but hardly CPU time, so the CI gate judges this (compare.timing_key).
    On CUDA it is host time only: the GPU's work shows in latency_s."""

    def recorded() -> None:
        t0 = time.process_time()
        step()
        out.append(time.process_time() - t0)

    return recorded


def injected_slowdown_fraction() -> float:
    """TESTING HOOK, never for real measurements: MOEBENCH_INJECT_SLOWDOWN=F in the environment makes
    every timed step F times its own cost longer (F=0.15: 15% slower), so the CI gate's power can be
    measured against a slowdown of known size (scripts/gate_quality.py, README "CI regression gate").
    Results record the fraction as `injected_slowdown`."""
    value = os.environ.get("MOEBENCH_INJECT_SLOWDOWN") or "0"
    try:
        fraction = float(value)
    except ValueError:
        raise ValueError(f"MOEBENCH_INJECT_SLOWDOWN={value!r} is invalid: a number >= 0") from None
    if fraction < 0:
        raise ValueError(f"MOEBENCH_INJECT_SLOWDOWN={value!r} is invalid: a number >= 0")
    return fraction


def injected_slowdown(step, fraction: float):
    """step, followed by a busy-wait of `fraction` of its CPU time and at least that much wall time:
    the extra cost shows in both series the gate may judge (a sleep would show in neither CPU time
    nor, rounded by the scheduler, reliably in wall time)."""
    if fraction <= 0:
        return step

    def slowed() -> None:
        wall0, cpu0 = time.perf_counter(), time.process_time()
        step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # the step's own GPU time is part of what is stretched
        wall_end = time.perf_counter() + fraction * (time.perf_counter() - wall0)
        cpu_end = time.process_time() + fraction * (time.process_time() - cpu0)
        while time.process_time() < cpu_end or time.perf_counter() < wall_end:
            pass

    return slowed


@contextlib.contextmanager
def _quiet_stderr():
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _set_collect_stats(layer, on: bool) -> None:
    if hasattr(layer, "collect_stats"):
        layer.collect_stats = on


def _synthetic_routing(case: Case, spec, layer, n_tokens: int, device: str):
    """Forced selections per input variant when the workload names a distribution, else None."""
    work = case.workload
    if work.routing == "router":
        return None, {"name": "router", "seed": work.seed}
    router = getattr(layer, "router", None)
    if router is None or not hasattr(router, "selection_offset_TE"):
        raise ValueError(f"workload.routing={work.routing!r}: variant {spec.variant!r} has no top-k "
                         "selection to force; use routing: router")
    params = {"seed": work.seed, **work.routing_params}
    dist = make_distribution(work.routing, **params)
    E, K = spec.n_experts, spec.top_k
    offsets = [forcing_logits(dist.sample(n_tokens, E, K, step=i), E).to(device)
               for i in range(work.input_variants)]
    return offsets, describe(dist)


def _throughput_metrics(spec, latency: float, n_tokens: int, training: bool) -> dict[str, Any]:
    flops_per_token = accounting.layer_flops_per_token(spec, training=training)
    forward = sum(flops_per_token.values()) * n_tokens
    flops = forward * (3 if training else 1)  # backward ~ 2x forward (accounting.py)
    return {"latency_s": latency, "tokens_per_s": n_tokens / latency, "flops": flops,
            "flops_per_s": flops / latency}


def _expert_rows(spec, stats, n_tokens: int) -> float:
    """Rows the experts multiplied in the statistics forward: every E*C slot of a padded backend
    (empty ones compute on zeros; dropless padded sizes C by the busiest expert), else the kept
    assignments. Without statistics, every assignment (T*K_eff)."""
    if stats is None:
        return n_tokens * accounting.experts_per_token(spec)
    kept = stats.kept_load_E
    if spec.backend == "padded" and kept.numel():
        slots = stats.capacity if stats.capacity else int(kept.max().item())
        return kept.numel() * slots
    return float(kept.sum().item())


def _ceiling_metrics(spec, device: str, metrics: dict, n_tokens: int, training: bool,
                     timer) -> dict[str, Any]:
    """The same run's ceiling: a dense GEMM of the same shapes (compute-bound layers) and the
    memory-copy bandwidth (PEER, memory-bound: its floor is the expert bytes it must read)."""
    bandwidth = machine_copy_bandwidth(device)
    bytes_moved = accounting.layer_bytes(spec, n_tokens)
    out = {"copy_bandwidth_bytes_per_s": bandwidth,
           # time to move the predicted bytes once at copy bandwidth: the memory roofline
           "bandwidth_floor_s": sum(bytes_moved.values()) / bandwidth}
    if spec.variant == "peer":
        # PEER is memory-bound: its floor is the expert rows it must read (docs/formulas.md#peer)
        floor_s = bytes_moved["expert_weights"] / bandwidth
        out.update(floor_s=floor_s, frac_of_ceiling=floor_s / metrics["latency_s"])
        return out
    moved = metrics.get("phase_dispatch_s", 0.0) + metrics.get("phase_combine_s", 0.0)
    if moved > 0 and not training:
        # How fast dispatch + combine stream the bytes they must move (the K copies of x into expert
        # order and back): near the copy bandwidth, fine-grained routing's cost is the design's; far
        # below it, the implementation's.
        rate = (bytes_moved.get("dispatch", 0.0) + bytes_moved.get("combine", 0.0)) / moved
        out.update(dispatch_bytes_per_s=rate, dispatch_frac_of_bandwidth=rate / bandwidth)
    ceiling = dense_ffn_rate(spec, n_tokens, device, training, timer)
    # the expert work that ran (computed_flops less the other parts): dropped assignments are not credited,
    # a padded backend's empty slots are
    useful_experts = accounting.layer_flops_per_token(spec, training)["experts"] * n_tokens * (3 if training else 1)
    expert_flops = useful_experts + metrics.get("computed_flops", metrics["flops"]) - metrics["flops"]
    achieved = expert_flops / metrics["latency_s"]
    out.update(ceiling_flops_per_s=ceiling, frac_of_ceiling=achieved / ceiling if ceiling > 0 else None)
    return out


_BANDWIDTH: dict[str, float] = {}


def machine_copy_bandwidth(device: str) -> float:
    """Memory-copy bandwidth, measured once per worker process and device (it does not depend on the
    case, and 256 MiB copies cost a few hundred ms on a CPU)."""
    if device not in _BANDWIDTH:
        _BANDWIDTH[device] = copy_bandwidth(256 * 2**20, device)
    return _BANDWIDTH[device]


def _gpu_sampler(device: str):
    if device == "cuda":
        return NvmlSampler(0.05, cuda_uuid(torch.device("cuda", torch.cuda.current_device())))
    return _NoGpu()


class _NoGpu(contextlib.AbstractContextManager):
    summary = {"available": False, "reason": "device cpu"}

    def __exit__(self, *exc):
        return False


def _cuda_graph(layer, device: str, training: bool, inputs: list, token_ids: list, offsets, setup, state: dict):
    """(record, step, setup) replaying the forward from a CUDA graph, or (record, None, None) saying why
    not. The graph reads fixed buffers, so the untimed setup copies each next input (and forced routing
    offsets) into them; warm-up runs on a side stream before capture, as torch's CUDA-graph docs ask."""
    why = None
    if torch.device(device).type != "cuda":
        why = "not on CUDA"
    elif training:
        why = "forward mode only"
    else:
        sync = first_host_sync(layer, inputs[0])
        if sync is not None:
            why = f"the forward reads device values on the host ({sync})"
    if why is not None:
        return {"requested": True, "used": False, "why": why}, None, None
    static_x, static_ids = inputs[0].clone(), token_ids[0].clone()
    static_offsets = None
    if offsets is not None:
        static_offsets = offsets[0].clone()
        layer.router.selection_offset_TE = static_offsets
    side, main = torch.cuda.Stream(device), torch.cuda.current_stream(device)
    side.wait_stream(main)
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode():
        with torch.cuda.stream(side):
            for _ in range(3):
                layer(static_x, token_ids=static_ids)
        main.wait_stream(side)
        with torch.cuda.graph(graph):
            layer(static_x, token_ids=static_ids)

    def graph_setup() -> None:
        setup()
        static_x.copy_(state["x"])
        static_ids.copy_(state["ids"])
        if static_offsets is not None:
            static_offsets.copy_(layer.router.selection_offset_TE)
            layer.router.selection_offset_TE = static_offsets

    return {"requested": True, "used": True, "why": None}, graph.replay, graph_setup


def dense_ffn_rate(spec, n_tokens: int, device: str, training: bool, timer) -> float:
    """FLOP/s of the GEMMs of one dense FFN over all T*K assignments at once: the experts' GEMM shapes
    with no routing, dispatch, activation or small-group penalty, each a plain matmul timed alone
    (moebench.measure.ceilings.gemm_samples). Expert FLOPs over this rate = the time the design would
    take if everything but its GEMMs were free and every expert GEMM were as large as possible, so
    frac_of_ceiling stays below 1 (a ceiling that timed the activation too was beaten by layers that
    fuse it). Training adds the backward's two GEMMs per weight: the input and the weight gradient."""
    dtype = torch_dtype(spec.dtype)
    m = max(1, round(accounting.experts_per_token(spec) * n_tokens))
    D, Fh = spec.d_model, spec.d_ff
    I = 2 * Fh if spec.activation == "swiglu" else Fh
    shapes = [(m, I, D), (m, D, Fh)]  # (rows, cols, inner): x @ w_in^T, act @ w_out^T
    if training:  # dx = dh @ w_in, dW_in = dh^T @ x, dact = dy @ w_out, dW_out = dy^T @ act
        shapes += [(m, D, I), (I, D, m), (m, Fh, D), (D, Fh, m)]
    budget = 1.0 / len(shapes)
    seconds = sum(gemm_samples(a, b, c, dtype, device, timer=timer, warmup=2, min_samples=5, max_samples=20,
                               budget_s=budget, rel_ci_target=0.05).median for a, b, c in shapes)
    return sum(2 * a * b * c for a, b, c in shapes) / seconds


