"""GPU statistics from NVML: present per GPU where a driver is, simply absent (one log line) where not."""

import logging
from types import SimpleNamespace

import pytest

from edge_agent.telemetry.nvml import GpuStats


class FakeNvml:
    """The slice of pynvml that GpuStats uses, over a list of GPUs described as dicts."""

    NVML_TEMPERATURE_GPU = 0

    class NVMLError(Exception):
        pass

    class NVMLError_NotSupported(NVMLError):  # noqa: N801, N818 - pynvml's name
        pass

    class NVMLError_LibraryNotFound(NVMLError):  # noqa: N801, N818 - pynvml's name
        pass

    def __init__(self, gpus, *, driver=True):
        self.gpus = gpus
        self.driver = driver
        self.shutdowns = 0

    def nvmlInit(self):  # noqa: N802 - pynvml's name
        if not self.driver:
            raise self.NVMLError_LibraryNotFound("NVML Shared Library Not Found")

    def nvmlShutdown(self):  # noqa: N802
        self.shutdowns += 1

    def nvmlDeviceGetCount(self):  # noqa: N802
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i):  # noqa: N802
        return i

    def _get(self, handle, key):
        value = self.gpus[handle].get(key)
        if value is None:
            raise self.NVMLError_NotSupported("Not Supported")
        return value

    def nvmlDeviceGetName(self, h):  # noqa: N802
        return self._get(h, "name")

    def nvmlDeviceGetUtilizationRates(self, h):  # noqa: N802
        return SimpleNamespace(gpu=self._get(h, "util"), memory=0)

    def nvmlDeviceGetMemoryInfo(self, h):  # noqa: N802
        used, total = self._get(h, "memory")
        return SimpleNamespace(used=used, total=total, free=total - used)

    def nvmlDeviceGetTemperature(self, h, sensor):  # noqa: N802
        assert sensor == self.NVML_TEMPERATURE_GPU
        return self._get(h, "temp")

    def nvmlDeviceGetPowerUsage(self, h):  # noqa: N802
        return self._get(h, "power_mw")

    def nvmlDeviceGetDecoderUtilization(self, h):  # noqa: N802
        return [self._get(h, "decoder"), 167000]  # (percent, sampling period in us)


L4 = {"name": b"NVIDIA L4", "util": 37, "memory": (3 << 30, 24 << 30), "temp": 54, "power_mw": 41250,
      "decoder": 12}


def test_snapshot_per_gpu():
    """Every reading per GPU, in the units the stats message uses (W, MiB, percent, Celsius)."""
    stats = GpuStats.open(FakeNvml([L4, {**L4, "name": "NVIDIA L4", "util": 80}]))
    assert stats is not None
    first, second = stats.snapshot()
    assert first == {"index": 0, "name": "NVIDIA L4", "util_percent": 37, "memory_used_mb": 3072.0,
                     "memory_total_mb": 24576.0, "temperature_c": 54, "power_w": 41.2,
                     "decoder_util_percent": 12}
    assert second["util_percent"] == 80


def test_unsupported_readings_are_left_out():
    """A GPU without a power sensor or decoder counter reports the rest, not zeros."""
    stats = GpuStats.open(FakeNvml([{**L4, "power_mw": None, "decoder": None}]))
    assert stats is not None
    (gpu,) = stats.snapshot()
    assert "power_w" not in gpu
    assert "decoder_util_percent" not in gpu
    assert gpu["temperature_c"] == 54


def test_no_driver_means_no_gpu_stats_and_one_log_line(caplog):
    """Without a driver, open() gives None and logs exactly one line saying why."""
    with caplog.at_level(logging.INFO, logger="edge_agent.telemetry.nvml"):
        assert GpuStats.open(FakeNvml([L4], driver=False)) is None
    assert len(caplog.records) == 1
    assert "NVML unavailable" in caplog.records[0].getMessage()
    assert "LibraryNotFound" in caplog.records[0].getMessage()


def test_real_nvml_on_this_box(caplog):
    """With the real nvidia-ml-py: on a box without a driver, no stats and one line; else real GPUs."""
    pynvml = pytest.importorskip("pynvml")
    with caplog.at_level(logging.INFO, logger="edge_agent.telemetry.nvml"):
        stats = GpuStats.open()
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        assert stats is None
        assert len(caplog.records) == 1
        return
    pynvml.nvmlShutdown()
    assert stats is not None
    assert all("memory_total_mb" in gpu for gpu in stats.snapshot())
    stats.close()


def test_close_shuts_nvml_down():
    fake = FakeNvml([L4])
    stats = GpuStats.open(fake)
    assert stats is not None
    stats.close()
    assert fake.shutdowns == 1
