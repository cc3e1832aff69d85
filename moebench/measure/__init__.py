"""Measurement: timers and adaptive sampling, per-phase timing, peak memory, NVML sampling,
environment capture and machine ceilings. Pure library code; the runner decides what to measure."""

from moebench.measure.ceilings import copy_bandwidth, gemm_ceiling
from moebench.measure.environment import capture_environment
from moebench.measure.memory import PeakMemory, PeakMemoryTracker, peak_memory
from moebench.measure.nvml import NvmlSampler
from moebench.measure.phases import PhaseBreakdown, PhaseRecorder, phase, phase_breakdown
from moebench.measure.timers import CpuTimer, CudaTimer, Samples, fixed_threads, make_timer, measure

__all__ = [
    "CpuTimer", "CudaTimer", "NvmlSampler", "PeakMemory", "PeakMemoryTracker", "PhaseBreakdown", "PhaseRecorder",
    "Samples", "capture_environment", "copy_bandwidth", "fixed_threads", "gemm_ceiling", "make_timer", "measure",
    "peak_memory", "phase", "phase_breakdown",
]
