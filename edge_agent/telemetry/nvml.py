"""GPU statistics from NVML (nvidia-ml-py): utilisation, memory, temperature, power, decoder load.

`GpuStats.open()` is called once at start. Where there is no NVIDIA driver (a CPU box, a
container without the GPU mounted), nvmlInit fails within a millisecond; the stats message then
simply has no `gpus` section and one log line says why. A field a GPU does not support (power
on many Jetsons, the decoder on some data-centre parts) is left out of that GPU's entry rather
than reported as zero, and so is a field whose read fails once (a GPU fallen off the bus must
not stop the stats message).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class GpuStats:
    """Per-GPU readings through an NVML module (`pynvml` from nvidia-ml-py, or a test fake)."""

    def __init__(self, nvml: Any) -> None:
        self._nvml = nvml
        count = int(nvml.nvmlDeviceGetCount())
        self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        self.names = [_text(nvml.nvmlDeviceGetName(h)) for h in self._handles]
        log.info("NVML: %d GPU(s): %s", count, ", ".join(self.names) or "-")

    @classmethod
    def open(cls, nvml: Any = None) -> GpuStats | None:
        """Statistics for every GPU NVML sees, or None (logged once) where NVML is unavailable."""
        if nvml is None:
            try:
                nvml = importlib.import_module("pynvml")
            except ImportError as exc:
                log.info("GPU statistics off: nvidia-ml-py is not installed (%s)", exc)
                return None
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            log.info("GPU statistics off: NVML unavailable (%s: %s)", type(exc).__name__, exc)
            return None
        try:
            return cls(nvml)
        except nvml.NVMLError as exc:
            log.warning("GPU statistics off: NVML initialised but cannot list GPUs (%s)", exc)
            nvml.nvmlShutdown()
            return None

    def _merge(self, entry: dict[str, Any], read: Callable[[], dict[str, Any]]) -> None:
        # Not supported on this GPU, or not readable right now: the fields are left out.
        with contextlib.suppress(self._nvml.NVMLError):
            entry.update(read())

    def _readings(self, handle: Any) -> list[Callable[[], dict[str, Any]]]:
        nvml = self._nvml

        def memory() -> dict[str, Any]:
            info = nvml.nvmlDeviceGetMemoryInfo(handle)
            return {"memory_used_mb": round(info.used / 2**20, 1), "memory_total_mb": round(info.total / 2**20, 1)}

        return [
            lambda: {"util_percent": int(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)},
            memory,
            lambda: {"temperature_c": int(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))},
            lambda: {"power_w": round(nvml.nvmlDeviceGetPowerUsage(handle) / 1000, 1)},  # milliwatts
            lambda: {"decoder_util_percent": int(nvml.nvmlDeviceGetDecoderUtilization(handle)[0])},
        ]

    def snapshot(self) -> list[dict[str, Any]]:
        """One dict per GPU, in NVML index order, with every field this GPU can report."""
        gpus = []
        for index, (handle, name) in enumerate(zip(self._handles, self.names, strict=True)):
            entry: dict[str, Any] = {"index": index, "name": name}
            for read in self._readings(handle):
                self._merge(entry, read)
            gpus.append(entry)
        return gpus

    def close(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError as exc:
            log.debug("nvmlShutdown: %s", exc)
