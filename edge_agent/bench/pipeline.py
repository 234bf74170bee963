"""One step of the pipeline sweep: the real `Daemon`, in this process, on N live RTSP cameras.

The daemon is built from an `EdgeConfig` exactly as `edge-agent run` builds it and publishes to
a real broker; the bench only reads what the daemon already keeps: its `StatsCollector` (per-stage
percentiles of every published result, batch sizes), its camera counters and slot drops. The
daemon's own periodic stats are pushed past the step (stats_interval_s at its maximum) so that
the bench alone decides the window: one snapshot at its start (which resets the collector), one
at its end.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.bench.cpu import CpuSample, CpuUse, child_pids, threads_cpu_s, threads_percent
from edge_agent.config.schema import EdgeConfig
from edge_agent.daemon import Daemon
from edge_agent.messages import CameraState
from edge_agent.telemetry.stats import STAGES

ONLINE_TIMEOUT_S = 30.0
_POLL_S = 0.1
_NODE = "bench"


class StepError(RuntimeError):
    """A step that could not be measured (cameras never came online, daemon failed to start)."""


@dataclass(frozen=True, slots=True)
class PipelineOptions:
    model: Path
    max_batch: int
    max_wait_ms: int
    threads: int | None
    workers: int | None
    confidence: float
    iou: float


@dataclass(frozen=True)
class PipelineStep:
    cameras: int
    camera_fps: float
    window_s: float
    processed_fps: float
    decoded_fps: float
    slot_drops: int
    stages_ms: dict[str, dict[str, float]]
    mean_batch: float
    batch_fill: float
    cpu: CpuUse
    inference_errors: int
    threads_cpu: dict[str, float]  # this process's CPU by thread group, % of one core

    @property
    def offered_fps(self) -> float:
        return self.cameras * self.camera_fps

    @property
    def drop_fraction(self) -> float:
        """Offered frames that were never published, whatever the reason (slot, decoder, network)."""
        return max(0.0, 1.0 - self.processed_fps / self.offered_fps)

    def stage_ms(self, stage: str, quantile: str) -> float:
        return self.stages_ms.get(stage, {}).get(quantile, float("nan"))


def edge_config(options: PipelineOptions, urls: list[str], broker: tuple[str, int]) -> EdgeConfig:
    """The config a user would write for these cameras (validated by the same schema)."""
    doc: dict[str, Any] = {
        "node": {"name": _NODE},
        "mqtt": {"host": broker[0], "port": broker[1], "client_id": f"bench-{time.monotonic_ns()}"},
        "model": {"path": str(options.model.resolve()), "max_batch": options.max_batch,
                  "max_wait_ms": options.max_wait_ms, "threads": options.threads,
                  "workers": options.workers,
                  "confidence": options.confidence, "iou": options.iou},
        "cameras": [{"name": f"cam{i + 1:02d}", "url": url, "stall_timeout_s": 5, "open_timeout_s": 10}
                    for i, url in enumerate(urls)],
        "stats_interval_s": 3600,
    }
    # Optional sections of newer schemas: nothing the bench needs listens on a port.
    if "metrics" in EdgeConfig.model_fields:
        doc["metrics"] = {"enabled": False}
    if "watch_config" in EdgeConfig.model_fields:
        doc["watch_config"] = False
    return EdgeConfig.model_validate(doc)


def _snapshot(daemon: Daemon) -> dict[str, Any]:
    loop = daemon.loop
    if loop is None:
        raise StepError("the daemon has no inference loop")
    return daemon.stats.snapshot(_NODE, daemon.camera_counters(), batches=loop.batches, frames=loop.frames,
                                 max_batch=loop.max_batch)


def _wait_online(daemon: Daemon, deadline_s: float, stop: threading.Event) -> None:
    """Bounded wait until every camera delivers frames (a live stream has no event to wait on)."""
    end = time.monotonic() + deadline_s
    while True:
        offline = [n for n, s in daemon.sources.items() if s.state != CameraState.ONLINE]
        if not offline:
            return
        if time.monotonic() >= end or stop.is_set():
            raise StepError(f"{len(offline)} of {len(daemon.sources)} cameras not online after "
                            f"{deadline_s:g} s: {offline[:4]}")
        stop.wait(_POLL_S)


def run_step(options: PipelineOptions, urls: list[str], broker: tuple[str, int], *, camera_fps: float,
             warmup_s: float, window_s: float, stop: threading.Event,
             on_window: Callable[[float], object] | None = None) -> PipelineStep:
    """One step: start the daemon on `urls`, warm up, measure `window_s`. `on_window(window_s)`
    is called as the window opens (a profiler attaching for exactly that window)."""
    daemon = Daemon(edge_config(options, urls, broker))
    try:
        daemon.start()
        _wait_online(daemon, ONLINE_TIMEOUT_S, stop)
        stop.wait(warmup_s)
        helpers = child_pids()
        _snapshot(daemon)  # resets the collector: the window starts now
        errors_before = daemon.loop.errors if daemon.loop else 0
        cpu_start, threads_start = CpuSample.take(helpers), threads_cpu_s()
        if on_window is not None:
            on_window(window_s)
        stop.wait(window_s)
        cpu_end, threads_end = CpuSample.take(helpers), threads_cpu_s()
        snap = _snapshot(daemon)
        errors = (daemon.loop.errors if daemon.loop else 0) - errors_before
        if stop.is_set():
            raise StepError("stopped")
    finally:
        daemon.stop()
    cameras = snap["cameras"]
    return PipelineStep(
        cameras=len(urls), camera_fps=camera_fps, window_s=float(snap["interval_s"]),
        processed_fps=sum(c["processed_fps"] for c in cameras.values()),
        decoded_fps=sum(c["input_fps"] for c in cameras.values()),
        slot_drops=sum(c["dropped"] for c in cameras.values()),
        stages_ms={s: snap["stages_ms"].get(s, {}) for s in STAGES},
        mean_batch=float(snap["batch"]["mean_size"]), batch_fill=float(snap["batch"]["mean_fill"]),
        cpu=CpuUse.between(cpu_start, cpu_end), inference_errors=errors,
        threads_cpu=threads_percent(threads_start, threads_end, (cpu_end.at_ns - cpu_start.at_ns) / 1e9),
    )
