"""The composition root: builds every stage from a validated config and wires them together.

    sources (thread per camera) -> slots -> inference workers (threads) -> publisher (thread) -> MQTT

Nothing else constructs stages, so each stage can be tested and replaced alone. `apply` moves a
running daemon to a new config touching only what changed (see `control.config_diff`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.batching.slots import FrameSlots
from edge_agent.config.loader import password_from
from edge_agent.config.schema import CameraConfig, EdgeConfig
from edge_agent.control.config_diff import ConfigDiff, diff
from edge_agent.frame import WallClock
from edge_agent.inference.detector import Detector, DetectorSettings
from edge_agent.inference.loading import LoadedModel, open_model
from edge_agent.messages import CameraState, CameraStatus, DetectionResult
from edge_agent.pipeline.analytics_stage import AnalyticsStage, unknown_rule_classes
from edge_agent.pipeline.inference_loop import InferenceLoop
from edge_agent.pipeline.workers import inference_plan
from edge_agent.publish.alarm_publisher import AlarmPublisher
from edge_agent.publish.alarm_spool import AlarmSpool
from edge_agent.publish.mqtt_link import LinkState, MqttEndpoint, MqttLink, Topics, encode
from edge_agent.publish.result_publisher import ResultPublisher
from edge_agent.sources.camera import CameraSource, SourceOptions
from edge_agent.telemetry.nvml import GpuStats
from edge_agent.telemetry.stats import CameraCounters, StatsCollector

log = logging.getLogger(__name__)

SUPERVISOR_TICK_S = 0.25
ModelOpener = Callable[..., LoadedModel]


class DaemonError(RuntimeError):
    """The daemon cannot start with this config and model (the message says why)."""


def source_options(cam: CameraConfig) -> SourceOptions:
    return SourceOptions(
        name=cam.name, url=cam.url, detect_fps=cam.detect_fps, stall_timeout_s=cam.stall_timeout_s,
        open_timeout_s=cam.open_timeout_s, reconnect_initial_s=cam.reconnect.initial_s,
        reconnect_max_s=cam.reconnect.max_s, loop=cam.loop, realtime=cam.realtime,
    )


def mqtt_endpoint(config: EdgeConfig) -> MqttEndpoint:
    m, tls = config.mqtt, config.mqtt.tls
    return MqttEndpoint(
        host=m.host, port=m.port, client_id=config.mqtt_client_id, keepalive_s=m.keepalive_s,
        username=m.username, password=password_from(m),
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


def check_rule_classes(cameras: tuple[CameraConfig, ...], class_names: tuple[str, ...]) -> None:
    for cam in cameras:
        unknown = unknown_rule_classes(cam, class_names)
        if unknown:
            raise DaemonError(f"camera {cam.name}: alarm rules name classes {unknown} that the model does not "
                              f"know (it knows {list(class_names)})")


def detector_settings(config: EdgeConfig) -> DetectorSettings:
    m = config.model
    # rect: a dynamic model runs 16:9 cameras at 320x192 instead of 320x320, as Ultralytics does.
    return DetectorSettings(conf_threshold=m.confidence, iou_threshold=m.iou, max_batch=m.max_batch,
                            rect=True)


class Daemon:
    def __init__(self, config: EdgeConfig, *, model_opener: ModelOpener = open_model) -> None:
        self.config = config
        self.model_opener = model_opener  # replaced by the model manager when a store is configured
        self.clock = WallClock()
        self.stats = StatsCollector()
        self.slots = FrameSlots()
        self.sources: dict[str, CameraSource] = {}
        self.statuses: dict[str, CameraStatus] = {}
        self.link: MqttLink | None = None
        self.publisher: ResultPublisher | None = None
        self.loop: InferenceLoop | None = None
        self.alarms: AlarmPublisher | None = None
        self.analytics: AnalyticsStage | None = None
        self.last_stats: dict[str, Any] = {}
        self.gpu_stats: GpuStats | None = None  # NVML; None where there is no NVIDIA driver
        self.on_link_created: list[Callable[[MqttLink], None]] = []  # command handlers re-attach
        self.on_published: list[Callable[[DetectionResult], None]] = [self.stats.record]
        self._apply_lock = threading.Lock()
        self._stop = threading.Event()
        self._supervisor = threading.Thread(target=self._supervise, name="supervisor", daemon=True)

    @property
    def model(self) -> LoadedModel | None:
        return self.loop.model if self.loop else None

    def _load_model(self, config: EdgeConfig) -> LoadedModel:
        m = config.model
        # An engine's optimisation profile is built for the batches this daemon will send.
        return self.model_opener(Path(m.path), backend=m.backend, settings=detector_settings(config),
                                 runner_options=inference_plan(m).runner_options, input_size=m.input_size)

    def start(self) -> None:
        cfg = self.config
        model = self._load_model(cfg)
        filters = {c.name: class_filter(c, model.manifest.class_names) for c in cfg.cameras}
        check_rule_classes(cfg.cameras, model.manifest.class_names)
        self.link = self._new_link(cfg)
        if cfg.alarms is not None:
            spool = AlarmSpool(cfg.alarms.spool_dir, max_messages=cfg.alarms.max_messages,
                               max_bytes=cfg.alarms.max_bytes)
            self.alarms = AlarmPublisher(self.link, spool)
            self.alarms.start()
            self.analytics = AnalyticsStage(self.alarms)
            self.on_published.append(self.analytics.on_result)
            for cam in cfg.cameras:
                if cam.enabled and cam.analytics:
                    self.analytics.configure(cam)
        self.publisher = ResultPublisher(self.link, detections_qos=cfg.mqtt.detections_qos,
                                         on_published=self._published)
        self.publisher.start()
        plan = inference_plan(cfg.model)
        self.loop = InferenceLoop(self.slots, model, self.publisher.submit, max_batch=cfg.model.max_batch,
                                  max_wait_ms=cfg.model.max_wait_ms, class_filters=filters, workers=plan.workers)
        self.loop.start()
        for cam in cfg.cameras:
            if cam.enabled:
                self._start_camera(cam)
            else:
                self._publish_status(CameraStatus(cam.name, CameraState.DISABLED, "disabled in config",
                                                  time.time()))
        self.gpu_stats = GpuStats.open()
        self._supervisor.start()
        log.info("edge-agent started: node %s, %d cameras, model %s, %s", cfg.node.name, len(self.sources),
                 model.label, plan.describe(), extra={"event": "started"})

    def _published(self, result: DetectionResult) -> None:
        for hook in self.on_published:
            hook(result)

    def _new_link(self, config: EdgeConfig) -> MqttLink:
        link = MqttLink(mqtt_endpoint(config), Topics(config.mqtt.topic_prefix, config.node.name))
        for status in self.statuses.values():
            link.publish(link.topics.status(status.camera), encode(status.payload()), qos=1, retain=True)
        for attach in self.on_link_created:
            attach(link)
        link.start()
        return link

    def _scaled_hw(self, source_hw: tuple[int, int]) -> tuple[int, int]:
        # Read per new stream, so cameras follow a model swap that changes the input size.
        model = self.model
        return model.detector.scaled_hw(source_hw) if model else source_hw

    def _start_camera(self, cam: CameraConfig) -> None:
        self.slots.add_camera(cam.name)
        source = CameraSource(source_options(cam), self.slots.put, self._scaled_hw, self._publish_status,
                              self.clock)
        self.sources[cam.name] = source
        source.set_state(CameraState.RECONNECTING, "connecting")
        source.start()

    def _stop_camera(self, name: str, *, reason: str, clear: bool) -> None:
        source = self.sources.pop(name, None)
        if source is not None:
            source.stop(timeout_s=1.0)
        self.slots.remove_camera(name)
        self._publish_status(CameraStatus(name, CameraState.DISABLED, reason, time.time()))
        if clear and self.link is not None:
            self.statuses.pop(name, None)
            self.link.clear_retained(self.link.topics.status(name))

    def _publish_status(self, status: CameraStatus) -> None:
        if status.state != CameraState.ONLINE:
            self.slots.set_not_live(status.camera)
            if self.analytics is not None:
                self.analytics.end_camera(status.camera, f"camera {status.state.value}: {status.reason}")
        self.statuses[status.camera] = status
        link = self.link
        if link is not None:
            link.publish(link.topics.status(status.camera), encode(status.payload()), qos=1, retain=True)

    def apply(self, new: EdgeConfig) -> ConfigDiff:
        """Move to `new`, touching only what changed. Raises (leaving the old config in place)
        when the new model cannot be loaded or a camera names classes the model lacks."""
        with self._apply_lock:
            change = diff(self.config, new)
            loop, publisher = self.loop, self.publisher
            if change.empty or loop is None or publisher is None:
                self.config = new
                return change
            model = self._model_for(change, new, loop.model)
            filters = {c.name: class_filter(c, model.manifest.class_names) for c in new.cameras}
            if change.model or change.detector:
                loop.swap_model(model, max_batch=new.model.max_batch, max_wait_ms=new.model.max_wait_ms,
                                class_filters=filters)
            check_rule_classes(new.cameras, model.manifest.class_names)
            if change.mqtt:
                old_link, self.link = self.link, self._new_link(new)
                publisher.set_link(self.link)
                if self.alarms is not None:
                    self.alarms.set_link(self.link)
                if old_link is not None:
                    old_link.stop()
            publisher.detections_qos = new.mqtt.detections_qos
            for name, class_ids in filters.items():
                loop.set_class_filter(name, class_ids)
            self._apply_cameras(change)
            self.config = new
            log.info("config applied: %s", "; ".join(change.summary), extra={"event": "config_applied"})
            return change

    def _apply_cameras(self, change: ConfigDiff) -> None:
        for name in change.removed:
            self._stop_camera(name, reason="removed from config", clear=True)
            if self.analytics is not None:
                self.analytics.remove(name)
        for cam in change.changed:
            self._stop_camera(cam.name, reason="restarting with new settings", clear=False)
        for cam in change.changed + change.added:
            if self.analytics is not None:
                self.analytics.configure(cam)
            self._start_camera(cam)

    def swap_model(self, model: LoadedModel) -> LoadedModel:
        """Serve `model` from the next batch on (never inside one); returns the previous model."""
        loop = self.loop
        if loop is None:
            raise DaemonError("the daemon is not running")
        filters = {c.name: class_filter(c, model.manifest.class_names) for c in self.config.cameras}
        previous = loop.swap_model(model, max_batch=self.config.model.max_batch,
                                   max_wait_ms=self.config.model.max_wait_ms, class_filters=filters)
        log.info("model swapped: %s -> %s", previous.label, model.label,
                 extra={"event": "model_swapped", "sha256": model.manifest.sha256})
        return previous

    def _model_for(self, change: ConfigDiff, new: EdgeConfig, current: LoadedModel) -> LoadedModel:
        if change.model:
            return self._load_model(new)  # off the hot path; the current model keeps serving
        if change.detector:  # same runner, new thresholds and batch buffers
            d = current.detector
            return LoadedModel(current.manifest, Detector(d.runner, current.manifest.class_names,
                                                          input_hw=d.input_hw, dynamic_hw=d.dynamic_hw,
                                                          settings=detector_settings(new)))
        return current

    def camera_counters(self) -> dict[str, CameraCounters]:
        dropped = self.slots.dropped()
        return {
            name: CameraCounters(s.decoded_frames, s.seq, dropped.get(name, 0), s.reconnects, s.stalls,
                                 s.state.value if s.state else "unknown")
            for name, s in list(self.sources.items())
        }

    def hot_path_alive(self, max_age_s: float) -> bool:
        """Every inference worker came back from its last batch (or idle wait) recently."""
        loop = self.loop
        return loop is not None and (time.monotonic_ns() - loop.heartbeat_ns) / 1e9 <= max_age_s

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
        loop, link, publisher = self.loop, self.link, self.publisher
        if loop is None or link is None or publisher is None:
            return
        extra: dict[str, Any] = {
            "mqtt": {"state": link.state.value, "dropped": link.dropped,
                     "queue_full_drops": publisher.queue_full_drops},
            "inference_errors": loop.errors,
            "inference_workers": loop.workers,
        }
        if self.gpu_stats is not None:
            extra["gpus"] = self.gpu_stats.snapshot()
        runner_snapshot = getattr(loop.model.detector.runner, "snapshot", None)
        if callable(runner_snapshot):  # several GPUs: per-runner throughput and the sha256 each serves
            extra["runners"] = runner_snapshot()
        if self.alarms is not None:
            extra["alarms"] = {"spooled": len(self.alarms.spool), "spool_dropped": self.alarms.spool.dropped}
        self.last_stats = self.stats.snapshot(
            self.config.node.name, self.camera_counters(), batches=loop.batches, frames=loop.frames,
            max_batch=loop.max_batch, extra=extra)
        link.publish(link.topics.stats, encode(self.last_stats), qos=0)

    @property
    def mqtt_connected(self) -> bool:
        return self.link is not None and self.link.state == LinkState.CONNECTED

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop taking frames, finish the batch in flight, publish it, then say goodbye."""
        deadline = time.monotonic() + timeout_s
        self._stop.set()
        sources = list(self.sources.values())
        for source in sources:
            source.request_stop()  # all first, then join each briefly
        for source in sources:
            source.stop(max(0.05, min(1.0, deadline - time.monotonic() - 2.0)))
        if self.loop is not None:
            self.loop.stop(max(0.1, deadline - time.monotonic() - 1.5))
        if self.publisher is not None:
            self.publisher.stop(max(0.1, deadline - time.monotonic() - 1.0))
        for name in self.sources:
            self._publish_status(CameraStatus(name, CameraState.DISABLED, "edge-agent stopped", time.time()))
        if self.alarms is not None:
            # Deliver what the broker can take now; the rest stays spooled for the next start.
            self.alarms.wait_drained(max(0.0, deadline - time.monotonic() - 1.0))
            self.alarms.stop(timeout_s=0.5)
        if self.link is not None:
            self.link.stop(max(0.1, deadline - time.monotonic()))
        if self._supervisor.is_alive():
            self._supervisor.join(0.5)
        log.info("edge-agent stopped", extra={"event": "stopped"})
