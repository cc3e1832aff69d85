"""NVML sampling: the GPU's clocks, power, energy, temperature, throttling and utilisation during a run.

A timing means little without its conditions: an H100 that hits its power cap runs at a lower SM
clock, and the same kernel takes longer. `NvmlSampler` polls NVML (pynvml, from nvidia-ml-py) on a
background thread and summarises on exit. NVML reads are host-side driver queries; they do not
synchronise or launch anything on the GPU, so the sampler does not perturb CUDA timings much (it
does take a little CPU, so leave it off for CPU benchmarks).

Without pynvml, a driver or the device, the sampler records {"available": False, "reason": ...} and
never raises; each field that a GPU does not support is None in its samples instead of an error.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

# NVML clock-event ("throttle") reason bits, stable across NVML versions (nvml.h).
THROTTLE_REASONS = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}
# Reasons that mean the GPU ran slower than it could have for the work given. Idle, sync boost and
# application/display clock settings are states, not penalties.
SLOWDOWN_REASONS = {"sw_power_cap", "hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown",
                    "hw_power_brake_slowdown"}


def throttle_names(mask: int) -> list[str]:
    """Decode an NVML throttle-reason bitmask into names; unknown bits become 'bit_0x..'."""
    names = [name for bit, name in THROTTLE_REASONS.items() if mask & bit]
    unknown = mask & ~sum(THROTTLE_REASONS)
    names += [f"bit_{1 << i:#x}" for i in range(64) if unknown >> i & 1]
    return names


def _load_nvml():
    """The initialised pynvml module, or raise with a reason a person can act on."""
    try:
        import pynvml
    except ImportError as e:
        raise RuntimeError(f"pynvml not importable ({e}); install nvidia-ml-py") from e
    pynvml.nvmlInit()  # raises NVMLError (e.g. LibraryNotFound, DriverNotLoaded) without a driver
    return pynvml


def _query(fn: Callable[[], Any]) -> Any:
    """One NVML field, None when the GPU or driver does not support it."""
    try:
        return fn()
    except Exception:
        return None


def _throttle_reader(nvml):
    # renamed "clocks event reasons" in NVML 12.x; the old name still works but is deprecated
    new = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
    return new or nvml.nvmlDeviceGetCurrentClocksThrottleReasons


def read_sample(nvml, handle) -> dict[str, Any]:
    """One reading of every field we track; units in the key names."""
    power_mw = _query(lambda: nvml.nvmlDeviceGetPowerUsage(handle))
    util = _query(lambda: nvml.nvmlDeviceGetUtilizationRates(handle))
    return {
        "t": time.monotonic(),
        "sm_clock_mhz": _query(lambda: nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM)),
        "mem_clock_mhz": _query(lambda: nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_MEM)),
        "power_w": None if power_mw is None else power_mw / 1e3,
        "energy_mj": _query(lambda: nvml.nvmlDeviceGetTotalEnergyConsumption(handle)),  # since driver load
        "temperature_c": _query(lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)),
        "throttle_mask": _query(lambda: _throttle_reader(nvml)(handle)),
        "gpu_util_pct": None if util is None else util.gpu,
        "mem_util_pct": None if util is None else util.memory,
    }


def summarize(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Summary of samples from read_sample: mean/max power, energy, clock range, throttling."""
    if not samples:
        return {"available": False, "reason": "no samples were taken"}

    def values(key):
        return [s[key] for s in samples if s.get(key) is not None]

    def stat(key, fn):
        v = values(key)
        return fn(v) if v else None

    energy_j = None
    energy = values("energy_mj")
    if len(energy) >= 2:
        energy_j = (energy[-1] - energy[0]) / 1e3
    elif len(samples) >= 2 and len(values("power_w")) == len(samples):
        # no energy counter (pre-Volta): integrate power over time with the trapezoid rule
        pairs = zip(samples, samples[1:], strict=False)
        energy_j = sum((b["t"] - a["t"]) * (a["power_w"] + b["power_w"]) / 2 for a, b in pairs)
    reasons = sorted({name for mask in values("throttle_mask") for name in throttle_names(mask)})
    return {
        "available": True,
        "n_samples": len(samples),
        "duration_s": samples[-1]["t"] - samples[0]["t"],
        "power_w_mean": stat("power_w", lambda v: sum(v) / len(v)),
        "power_w_max": stat("power_w", max),
        "energy_j": energy_j,
        "sm_clock_mhz_min": stat("sm_clock_mhz", min),
        "sm_clock_mhz_max": stat("sm_clock_mhz", max),
        "mem_clock_mhz_min": stat("mem_clock_mhz", min),
        "mem_clock_mhz_max": stat("mem_clock_mhz", max),
        "temperature_c_max": stat("temperature_c", max),
        "gpu_util_pct_mean": stat("gpu_util_pct", lambda v: sum(v) / len(v)),
        "mem_util_pct_mean": stat("mem_util_pct", lambda v: sum(v) / len(v)),
        "throttle_reasons": reasons,
        "throttled": any(r in SLOWDOWN_REASONS for r in reasons),
    }


class NvmlSampler:
    """`with NvmlSampler(0.05, cuda_uuid("cuda:0")) as s: run()` then s.summary (dict) and s.samples.

    The GPU is found by its UUID when given (CUDA and NVML number devices differently once
    CUDA_VISIBLE_DEVICES or CUDA_DEVICE_ORDER are set), else by NVML index.
    """

    def __init__(self, interval_s: float = 0.05, uuid: str | None = None, device_index: int = 0,
                 loader: Callable[[], Any] = _load_nvml):
        if interval_s <= 0:
            raise ValueError(f"interval_s={interval_s} is invalid: must be > 0")
        self.interval_s = interval_s
        self.uuid = uuid
        self.device_index = device_index
        self.loader = loader
        self.samples: list[dict[str, Any]] = []
        self.summary: dict[str, Any] = {"available": False, "reason": "sampler not run"}
        self._nvml = self._handle = self._thread = None
        self._stop = threading.Event()

    def __enter__(self) -> NvmlSampler:
        try:
            self._nvml = self.loader()
            self._handle = get_handle(self._nvml, self.uuid, self.device_index)
        except Exception as e:
            self._nvml = None
            self.summary = {"available": False, "reason": f"{type(e).__name__}: {e}"}
            return self
        self.samples.append(read_sample(self._nvml, self._handle))  # a reading at entry, however short the run
        self._thread = threading.Thread(target=self._loop, name="moebench-nvml", daemon=True)
        self._thread.start()
        return self

    def _loop(self):
        while not self._stop.wait(self.interval_s):
            self.samples.append(read_sample(self._nvml, self._handle))

    def __exit__(self, *exc):
        if self._nvml is None:
            return False
        self._stop.set()
        self._thread.join()
        self.samples.append(read_sample(self._nvml, self._handle))  # and one at exit, for the energy delta
        self.summary = summarize(self.samples)
        _query(self._nvml.nvmlShutdown)
        return False


def cuda_uuid(device) -> str | None:
    """NVML's UUID string ("GPU-...") of a torch CUDA device, None if unknown."""
    try:
        import torch

        uuid = str(torch.cuda.get_device_properties(device).uuid)
    except Exception:
        return None
    return uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"


def get_handle(nvml, uuid: str | None, device_index: int):
    """NVML handle by UUID if given and known to NVML, else by index."""
    if uuid is not None:
        handle = _query(lambda: nvml.nvmlDeviceGetHandleByUUID(uuid))
        if handle is not None:
            return handle
    return nvml.nvmlDeviceGetHandleByIndex(device_index)


def device_info(uuid: str | None = None, device_index: int = 0,
                loader: Callable[[], Any] = _load_nvml) -> dict[str, Any]:
    """Driver version, name and current clocks of one GPU via NVML; {"available": False, ...} if none."""
    try:
        nvml = loader()
        handle = get_handle(nvml, uuid, device_index)
    except Exception as e:
        return {"available": False, "reason": f"{type(e).__name__}: {e}"}
    try:
        info = {"available": True,
                "driver": _query(nvml.nvmlSystemGetDriverVersion),
                "name": _query(lambda: nvml.nvmlDeviceGetName(handle)),
                "power_limit_w": _query(lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1e3),
                "sm_clock_max_mhz": _query(lambda: nvml.nvmlDeviceGetMaxClockInfo(handle, nvml.NVML_CLOCK_SM))}
        sample = read_sample(nvml, handle)
        sample.pop("t")
        mask = sample["throttle_mask"]
        sample["throttle_reasons"] = None if mask is None else throttle_names(mask)
        return info | sample
    finally:
        _query(nvml.nvmlShutdown)
