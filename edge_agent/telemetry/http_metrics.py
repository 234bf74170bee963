"""Prometheus metrics and a liveness check over HTTP: GET /metrics, GET /healthz.

Counters the stages keep anyway are read at scrape time by a collector; only the per-stage
latency histograms are fed per published frame. The server binds to loopback by default: it has
no authentication, so exposing it is a deliberate choice in the config.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from edge_agent.messages import DetectionResult
from edge_agent.telemetry.stats import STAGES, CameraCounters

log = logging.getLogger(__name__)

_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


@dataclass(frozen=True)
class Health:
    alive: bool
    detail: dict[str, Any]


@dataclass(frozen=True)
class MetricsSources:
    """Read-only views of the daemon, called at scrape time."""

    cameras: Callable[[], dict[str, CameraCounters]]
    loop_counters: Callable[[], tuple[int, int, int]]  # batches, frames, errors
    model: Callable[[], tuple[str, str, str] | None]  # name, version, sha256
    mqtt_connected: Callable[[], bool]
    health: Callable[[], Health]
    gpu: Callable[[], list[dict[str, Any]]] = list


class _DaemonCollector(Collector):
    def __init__(self, sources: MetricsSources) -> None:
        self._s = sources

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        cams = self._s.cameras()
        counters = {
            "decoded": ("edge_agent_frames_decoded", "frames decoded per camera"),
            "delivered": ("edge_agent_frames_delivered", "frames handed to the batcher per camera"),
            "dropped": ("edge_agent_frames_dropped", "frames overwritten in the slot before inference"),
            "reconnects": ("edge_agent_camera_reconnects", "stream reconnects per camera"),
            "stalls": ("edge_agent_camera_stalls", "times a camera was marked stalled"),
        }
        for attr, (name, doc) in counters.items():
            family = CounterMetricFamily(name, doc, labels=["camera"])
            for camera, c in cams.items():
                family.add_metric([camera], getattr(c, attr))
            yield family
        up = GaugeMetricFamily("edge_agent_camera_online", "1 while the camera delivers frames",
                               labels=["camera", "state"])
        for camera, c in cams.items():
            up.add_metric([camera, c.state], 1.0 if c.state == "online" else 0.0)
        yield up
        batches, frames, errors = self._s.loop_counters()
        yield CounterMetricFamily("edge_agent_batches", "inference batches run", value=batches)
        yield CounterMetricFamily("edge_agent_batch_frames", "frames in all batches (fill = / batches)",
                                  value=frames)
        yield CounterMetricFamily("edge_agent_inference_errors", "batches that failed", value=errors)
        yield GaugeMetricFamily("edge_agent_mqtt_connected", "1 while connected to the broker",
                                value=1.0 if self._s.mqtt_connected() else 0.0)
        model = self._s.model()
        info = GaugeMetricFamily("edge_agent_model_info", "the model being served",
                                 labels=["name", "version", "sha256"])
        if model:
            info.add_metric(list(model), 1.0)
        yield info
        yield from _gpu_families(self._s.gpu())


def _gpu_families(gpus: list[dict[str, Any]]) -> Iterator[GaugeMetricFamily]:
    if not gpus:
        return
    keys = sorted({k for g in gpus for k, v in g.items() if isinstance(v, int | float) and k != "index"})
    for key in keys:
        family = GaugeMetricFamily(f"edge_agent_gpu_{key}", f"NVML {key}", labels=["gpu", "name"])
        for g in gpus:
            if isinstance(g.get(key), int | float):
                family.add_metric([str(g.get("index", "")), str(g.get("name", ""))], float(g[key]))
        yield family


class MetricsServer:
    def __init__(self, host: str, port: int, sources: MetricsSources) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_DaemonCollector(sources))
        self._stage = Histogram("edge_agent_stage_seconds", "time spent per pipeline stage, per frame",
                                ["stage"], buckets=_BUCKETS_S, registry=self.registry)
        self._stage_children = {s: self._stage.labels(s) for s in STAGES}
        self._sources = sources
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def observe(self, result: DetectionResult) -> None:
        for stage, ms in result.stamps.timings_ms().items():
            self._stage_children[stage].observe(ms / 1000.0)

    def start(self) -> None:
        self._thread.start()
        log.info("metrics on http://%s:%d/metrics", *self._server.server_address[:2])

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        registry, sources = self.registry, self._sources

        class Handler(BaseHTTPRequestHandler):
            timeout = 10  # a client that stalls mid-request does not hold a thread forever

            def do_GET(self) -> None:
                if self.path == "/metrics":
                    self._send(200, generate_latest(registry), "text/plain; version=0.0.4")
                elif self.path == "/healthz":
                    health = sources.health()
                    body = json.dumps({"status": "ok" if health.alive else "unhealthy", **health.detail})
                    self._send(200 if health.alive else 503, body.encode(), "application/json")
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:  # scrapes every few seconds: keep logs quiet
                return

        return Handler
