"""The composition root: builds every stage from a validated config and wires them together.

    sources (thread per camera) -> slots -> inference loop (thread) -> publisher (thread) -> MQTT

Nothing else constructs stages, so each stage can be tested and replaced alone.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.batching.slots import FrameSlots
from edge_agent.config.loader import password_from
from edge_agent.config.schema import CameraConfig, EdgeConfig
from edge_agent.frame import WallClock
from edge_agent.inference.detector import DetectorSettings
from edge_agent.inference.loading import LoadedModel, open_model
from edge_agent.messages import CameraState, CameraStatus
from edge_agent.pipeline.inference_loop import InferenceLoop
from edge_agent.publish.mqtt_link import MqttEndpoint, MqttLink, Topics, encode
from edge_agent.publish.result_publisher import ResultPublisher
from edge_agent.sources.camera import CameraSource, SourceOptions
from edge_agent.telemetry.stats import CameraCounters, StatsCollector

log = logging.getLogger(__name__)

SUPERVISOR_TICK_S = 0.25


class DaemonError(RuntimeError):
    """The daemon cannot start with this config and model (the message says why)."""


def source_options(cam: CameraConfig) -> SourceOptions:
    return SourceOptions(
        name=cam.name, url=cam.url, detect_fps=cam.detect_fps, stall_timeout_s=cam.stall_timeout_s,
        open_timeout_s=cam.open_timeout_s, reconnect_initial_s=cam.reconnect.initial_s,
        reconnect_max_s=cam.reconnect.max_s, loop=cam.loop, realtime=cam.realtime,
    )


def mqtt_endpoint(config: EdgeConfig) -> MqttEndpoint:
    m = config.mqtt
    tls = m.tls
    return MqttEndpoint(
        host=m.host, port=m.port, client_id=m.client_id or f"edge-agent-{config.node.name}",
        keepalive_s=m.keepalive_s, username=m.username, password=password_from(m),
        tls_ca=str(tls.ca) if tls and tls.ca else None,
        tls_cert=str(tls.cert) if tls and tls.cert else None,
        tls_key=str(tls.key) if tls and tls.key else None,
    )


def class_filter(cam: CameraConfig, class_names: tuple[str, ...]) -> np.ndarray | None:
    if not cam.classes:
        return None
    unknown = sorted(set(cam.classes) - set(class_names))
    if unknown:
        raise DaemonError(f"camera {cam.name}: classes {unknown} are not in the model "
                          f"(it knows {list(class_names)})")
    return np.array([class_names.index(c) for c in cam.classes], dtype=np.int64)


class Daemon:
    def __init__(self, config: EdgeConfig) -> None:
        self.config = config
        self.clock = WallClock()
        self.topics = Topics(config.mqtt.topic_prefix, config.node.name)
        self.stats = StatsCollector()
        self.slots = FrameSlots()
        self.sources: dict[str, CameraSource] = {}
        self.link: MqttLink | None = None
        self.publisher: ResultPublisher | None = None
        self.loop: InferenceLoop | None = None
        self.model: LoadedModel | None = None
        self.last_stats: dict[str, Any] = {}
        self._stop = threading.Event()
        self._supervisor = threading.Thread(target=self._supervise, name="supervisor", daemon=True)

    def start(self) -> None:
        cfg = self.config
        settings = DetectorSettings(conf_threshold=cfg.model.confidence, iou_threshold=cfg.model.iou,
                                    max_batch=cfg.model.max_batch, rect=True)
        self.model = open_model(Path(cfg.model.path), backend=cfg.model.backend, settings=settings,
                                runner_options={"threads": cfg.model.threads})
        names = self.model.manifest.class_names
        filters = {c.name: class_filter(c, names) for c in cfg.cameras}
        self.link = MqttLink(mqtt_endpoint(cfg), self.topics)
        self.link.start()
        self.publisher = ResultPublisher(self.link, cfg.node.name, detections_qos=cfg.mqtt.detections_qos,
                                         on_published=self.stats.record)
        self.publisher.start()
        self.loop = InferenceLoop(self.slots, self.model, self.publisher.submit,
                                  max_batch=cfg.model.max_batch, max_wait_ms=cfg.model.max_wait_ms,
                                  class_filters=filters)
        self.loop.start()
        for cam in cfg.cameras:
            if cam.enabled:
                self._start_camera(cam)
            else:
                self._publish_status(CameraStatus(cam.name, CameraState.DISABLED, "disabled in config",
                                                  time.time()))
        self._supervisor.start()
        log.info("edge-agent started: node %s, %d cameras, model %s", cfg.node.name,
                 len(self.sources), self.model.label)

    def _start_camera(self, cam: CameraConfig) -> None:
        if self.model is None:
            raise DaemonError("cameras start after the model is loaded")
        self.slots.add_camera(cam.name)
        source = CameraSource(source_options(cam), self.slots.put, self.model.detector.scaled_hw,
                              self._publish_status, self.clock)
        self.sources[cam.name] = source
        source.set_state(CameraState.RECONNECTING, "connecting")
        source.start()

    def _publish_status(self, status: CameraStatus) -> None:
        if status.state != CameraState.ONLINE:
            self.slots.set_not_live(status.camera)
        if self.link is not None:
            self.link.publish(self.topics.status(status.camera), encode(status.payload()), qos=1, retain=True)

    def camera_counters(self) -> dict[str, CameraCounters]:
        dropped = self.slots.dropped()
        return {
            name: CameraCounters(s.decoded_frames, s.seq, dropped.get(name, 0), s.reconnects, s.stalls,
                                 s.state.value if s.state else "unknown")
            for name, s in self.sources.items()
        }

    def _supervise(self) -> None:
        next_stats_ns = time.monotonic_ns() + int(self.config.stats_interval_s * 1e9)
        while not self._stop.wait(SUPERVISOR_TICK_S):
            now = time.monotonic_ns()
            for source in list(self.sources.values()):
                source.check_stall(now)
            if now >= next_stats_ns:
                next_stats_ns = now + int(self.config.stats_interval_s * 1e9)
                self._publish_stats()

    def _publish_stats(self) -> None:
        if self.loop is None or self.link is None or self.publisher is None:
            return
        self.last_stats = self.stats.snapshot(
            self.config.node.name, self.camera_counters(), batches=self.loop.batches,
            frames=self.loop.frames, max_batch=self.loop.max_batch,
            extra={"mqtt": {"state": self.link.state.value, "dropped": self.link.dropped,
                            "queue_full_drops": self.publisher.queue_full_drops},
                   "inference_errors": self.loop.errors},
        )
        self.link.publish(self.topics.stats, encode(self.last_stats), qos=0)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop taking frames, finish the batch in flight, publish it, then say goodbye."""
        deadline = time.monotonic() + timeout_s
        self._stop.set()
        for source in self.sources.values():
            source.request_stop()  # all first, then join each briefly
        for source in self.sources.values():
            source.stop(max(0.05, min(1.0, deadline - time.monotonic() - 2.0)))
        if self.loop is not None:
            self.loop.stop(max(0.1, deadline - time.monotonic() - 1.5))
        if self.publisher is not None:
            self.publisher.stop(max(0.1, deadline - time.monotonic() - 1.0))
        for name in self.sources:
            self._publish_status(CameraStatus(name, CameraState.DISABLED, "edge-agent stopped", time.time()))
        if self.link is not None:
            self.link.stop(max(0.1, deadline - time.monotonic()))
        if self._supervisor.is_alive():
            self._supervisor.join(0.5)
        log.info("edge-agent stopped")
