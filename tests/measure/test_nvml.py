"""NVML sampler: the no-driver path on this machine, the summary on hand-made samples, and the
sampling thread against a small stand-in for the pynvml module (there is no GPU here)."""

import time
import types

import pytest

from moebench.measure import nvml
from moebench.measure.nvml import NvmlSampler, device_info, summarize, throttle_names


def nvml_loads() -> bool:
    try:
        nvml._load_nvml()
        return True
    except Exception:
        return False


@pytest.mark.skipif(nvml_loads(), reason="this machine has an NVIDIA driver")
def test_without_a_driver_the_sampler_records_why_and_never_raises():
    with NvmlSampler(0.01) as s:
        time.sleep(0.02)
    assert s.summary["available"] is False
    assert isinstance(s.summary["reason"], str) and s.summary["reason"]
    assert s.samples == []
    info = device_info()
    assert info["available"] is False and info["reason"]


def test_without_pynvml_the_reason_says_so():
    def loader():
        raise RuntimeError("pynvml not importable (No module named 'pynvml'); install nvidia-ml-py")

    with NvmlSampler(0.01, loader=loader) as s:
        pass
    assert s.summary == {"available": False,
                         "reason": "RuntimeError: pynvml not importable (No module named 'pynvml'); "
                                   "install nvidia-ml-py"}


def test_throttle_reasons_decode():
    assert throttle_names(0) == []
    assert throttle_names(0x1) == ["gpu_idle"]
    assert throttle_names(0x4 | 0x40) == ["sw_power_cap", "hw_thermal_slowdown"]
    assert throttle_names(0x1000) == ["bit_0x1000"]


def sample(t, power, energy, sm, mem=2619, temp=50, mask=0, util=90):
    return {"t": t, "sm_clock_mhz": sm, "mem_clock_mhz": mem, "power_w": power, "energy_mj": energy,
            "temperature_c": temp, "throttle_mask": mask, "gpu_util_pct": util, "mem_util_pct": util // 2}


def test_summary_of_known_samples():
    samples = [sample(10.0, 300.0, 1_000_000, 1980),
               sample(10.5, 500.0, 1_200_000, 1755, temp=61, mask=0x4),  # power capped
               sample(11.0, 400.0, 1_450_000, 1980, mask=0x1, util=60)]
    s = summarize(samples)
    assert s["available"] is True and s["n_samples"] == 3
    assert s["duration_s"] == 1.0
    assert s["power_w_mean"] == pytest.approx(400.0) and s["power_w_max"] == 500.0
    assert s["energy_j"] == pytest.approx(450.0)  # counter delta, mJ -> J
    assert (s["sm_clock_mhz_min"], s["sm_clock_mhz_max"]) == (1755, 1980)
    assert (s["mem_clock_mhz_min"], s["mem_clock_mhz_max"]) == (2619, 2619)
    assert s["temperature_c_max"] == 61
    assert s["gpu_util_pct_mean"] == pytest.approx(80.0)
    assert s["throttle_reasons"] == ["gpu_idle", "sw_power_cap"]
    assert s["throttled"] is True


def test_summary_without_energy_counter_integrates_power_and_idle_is_not_throttling():
    samples = [sample(0.0, 100.0, None, 1410, mask=0x1), sample(2.0, 300.0, None, 1410, mask=0x1)]
    s = summarize(samples)
    assert s["energy_j"] == pytest.approx(400.0)  # trapezoid: 2 s * (100 + 300) / 2
    assert s["throttle_reasons"] == ["gpu_idle"] and s["throttled"] is False


def test_summary_of_unsupported_fields_and_of_nothing():
    samples = [{**sample(0.0, None, None, None), "throttle_mask": None}] * 2
    s = summarize(samples)
    assert s["power_w_mean"] is None and s["energy_j"] is None and s["sm_clock_mhz_min"] is None
    assert s["throttle_reasons"] == [] and s["throttled"] is False
    assert summarize([])["available"] is False


class StandInNvml(types.SimpleNamespace):
    """The few pynvml calls the sampler makes, returning a rising energy counter and fixed readings."""

    NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 1, 2, 0

    def __init__(self):
        super().__init__(energy=0, shutdown=0)

    def nvmlDeviceGetHandleByIndex(self, i):
        return ("handle", i)

    def nvmlDeviceGetHandleByUUID(self, uuid):
        raise RuntimeError("NVML_ERROR_NOT_FOUND")

    def nvmlDeviceGetClockInfo(self, handle, which):
        return 1980 if which == self.NVML_CLOCK_SM else 2619

    def nvmlDeviceGetPowerUsage(self, handle):
        return 250_000  # mW

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        self.energy += 1000  # mJ per reading
        return self.energy

    def nvmlDeviceGetTemperature(self, handle, sensor):
        raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")  # a field this GPU lacks

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle):
        return 0x4

    def nvmlDeviceGetUtilizationRates(self, handle):
        return types.SimpleNamespace(gpu=99, memory=40)

    def nvmlSystemGetDriverVersion(self):
        return "575.51"

    def nvmlDeviceGetName(self, handle):
        return "Stand-in GPU"

    def nvmlShutdown(self):
        self.shutdown += 1


def test_sampler_thread_collects_readings_and_summarises_on_exit():
    fake = StandInNvml()
    with NvmlSampler(0.005, uuid="GPU-unknown", loader=lambda: fake) as s:
        time.sleep(0.05)
    assert len(s.samples) >= 3  # entry, at least one periodic reading, exit
    ts = [x["t"] for x in s.samples]
    assert ts == sorted(ts)
    assert s.summary["available"] and s.summary["n_samples"] == len(s.samples)
    assert s.summary["energy_j"] == pytest.approx((len(s.samples) - 1) * 1.0)
    assert s.summary["power_w_max"] == 250.0 and s.summary["temperature_c_max"] is None
    assert s.summary["throttle_reasons"] == ["sw_power_cap"] and s.summary["throttled"]
    assert fake.shutdown == 1


def test_device_info_with_a_stand_in_reads_driver_name_and_clocks():
    info = device_info(loader=StandInNvml)
    assert info["available"] and info["driver"] == "575.51" and info["name"] == "Stand-in GPU"
    assert info["sm_clock_mhz"] == 1980 and info["throttle_reasons"] == ["sw_power_cap"]
    assert info["power_limit_w"] is None  # not in the stand-in: reported as unsupported
    assert "t" not in info


def test_interval_must_be_positive():
    with pytest.raises(ValueError, match="interval_s"):
        NvmlSampler(0)
