"""Periodic statistics: per-camera rates and counters, per-stage percentiles, batch fill, process.

Timings are recorded by the publisher thread as each result leaves; everything else is read from
counters the stages keep anyway. A snapshot covers the interval since the previous one.
"""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_agent.messages import SCHEMA_VERSION, DetectionResult

STAGES = ("decode", "queue", "preprocess", "infer", "postprocess", "publish", "total")
# Bounded per interval: at 16 cameras x 30 fps x 10 s this keeps every sample; beyond, the newest.
MAX_SAMPLES = 8192
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True, slots=True)
class CameraCounters:
    """Monotonic counters of one camera, read from its source and its slot."""

    decoded: int
    delivered: int
    dropped: int
    reconnects: int
    stalls: int
    state: str


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:  # noqa: PTH123 - a tiny procfs read
            return int(fh.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return 0


def percentiles(samples: deque[float]) -> dict[str, float]:
    if not samples:
        return {}
    p50, p95, p99 = np.percentile(np.fromiter(samples, np.float64), [50, 95, 99])
    return {"p50": round(float(p50), 3), "p95": round(float(p95), 3), "p99": round(float(p99), 3)}


class StatsCollector:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._timings: dict[str, deque[float]] = {s: deque(maxlen=MAX_SAMPLES) for s in STAGES}
        self._processed: defaultdict[str, int] = defaultdict(int)
        self._last_counters: dict[str, CameraCounters] = {}
        self._last_wall_ns = time.monotonic_ns()
        self._last_cpu_ns = time.process_time_ns()
        self._last_batches = (0, 0)

    def record(self, result: DetectionResult) -> None:
        """Called for every published result (publisher thread)."""
        timings = result.stamps.timings_ms()
        with self._lock:
            self._processed[result.camera] += 1
            for stage in STAGES:
                self._timings[stage].append(timings[stage])

    def snapshot(self, node: str, cameras: dict[str, CameraCounters], *, batches: int, frames: int,
                 max_batch: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Stats for the interval since the last snapshot, as the `stats` message."""
        now_ns, cpu_ns = time.monotonic_ns(), time.process_time_ns()
        elapsed_s = max((now_ns - self._last_wall_ns) / 1e9, 1e-9)
        with self._lock:
            processed, self._processed = self._processed, defaultdict(int)
            stages = {s: percentiles(self._timings[s]) for s in STAGES}
            for samples in self._timings.values():
                samples.clear()
        per_camera = {}
        for name, c in cameras.items():
            last = self._last_counters.get(name, CameraCounters(0, 0, 0, 0, 0, c.state))
            per_camera[name] = {
                "state": c.state,
                "input_fps": round((c.decoded - last.decoded) / elapsed_s, 2),
                "processed_fps": round(processed.get(name, 0) / elapsed_s, 2),
                "dropped": c.dropped - last.dropped,
                "reconnects": c.reconnects - last.reconnects,
                "stalls": c.stalls - last.stalls,
            }
        d_batches, d_frames = batches - self._last_batches[0], frames - self._last_batches[1]
        mean_batch = d_frames / d_batches if d_batches else 0.0
        cpu_percent = 100.0 * (cpu_ns - self._last_cpu_ns) / 1e9 / elapsed_s
        self._last_counters, self._last_batches = dict(cameras), (batches, frames)
        self._last_wall_ns, self._last_cpu_ns = now_ns, cpu_ns
        return {
            "schema": SCHEMA_VERSION,
            "node": node,
            "interval_s": round(elapsed_s, 3),
            "cameras": per_camera,
            "stages_ms": stages,
            "batch": {"mean_size": round(mean_batch, 3), "mean_fill": round(mean_batch / max_batch, 3),
                      "batches": d_batches},
            "process": {"cpu_percent": round(cpu_percent, 1), "rss_mb": round(rss_bytes() / 2**20, 1)},
            **(extra or {}),
        }
