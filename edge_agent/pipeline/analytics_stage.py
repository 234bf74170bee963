"""Per-camera analytics after publishing: tracking, zones, lines, alarm rules -> durable alarms.

Runs on the publisher thread, so each camera's results are seen once and in order, off the
inference thread. Alarms go to the spool-backed `AlarmPublisher`; counts are published retained.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

from edge_agent.analytics.rules import CameraAnalytics
from edge_agent.analytics.tracking import detections_from_objects
from edge_agent.config.schema import CameraConfig
from edge_agent.messages import DetectionResult, ModelRef
from edge_agent.publish.alarm_publisher import AlarmPublisher

log = logging.getLogger(__name__)


def unknown_rule_classes(cam: CameraConfig, class_names: Iterable[str]) -> list[str]:
    """Classes named by the camera's alarm rules that the model does not know."""
    known = set(class_names)
    rules = cam.analytics.rules if cam.analytics else ()
    return sorted({c for r in rules for c in (r.classes or ()) if c not in known})


class AnalyticsStage:
    def __init__(self, alarms: AlarmPublisher) -> None:
        self.alarms = alarms
        self._lock = threading.Lock()
        self._cameras: dict[str, CameraAnalytics] = {}
        self._last: dict[str, tuple[int, ModelRef]] = {}  # camera -> last frame and model seen

    def configure(self, cam: CameraConfig) -> None:
        """Start (or restart, ending its running alarms) a camera's analytics; None removes it."""
        self.end_camera(cam.name, "analytics reconfigured")
        with self._lock:
            if cam.analytics is not None:
                self._cameras[cam.name] = CameraAnalytics(cam.name, cam.analytics)
            else:
                self._cameras.pop(cam.name, None)

    def remove(self, camera: str) -> None:
        self.end_camera(camera, "camera removed")
        with self._lock:
            self._cameras.pop(camera, None)

    def end_camera(self, camera: str, reason: str) -> None:
        """A camera that stops delivering frames ends its running alarms (they cannot end by absence)."""
        with self._lock:
            analytics, last = self._cameras.get(camera), self._last.get(camera)
            events = analytics.end_all(last[0], time.time(), last[1]) if analytics and last else []
        for event in events:
            log.info("alarm %s ended on camera %s: %s", event.rule, camera, reason, extra={"event": "alarm_end"})
            self.alarms.submit(event)

    def on_result(self, result: DetectionResult) -> None:
        with self._lock:
            analytics = self._cameras.get(result.camera)
            if analytics is None:
                return
            self._last[result.camera] = (result.frame, result.model)
            out = analytics.process(result.frame, result.captured_at, detections_from_objects(result.objects),
                                    result.model)
        for event in out.events:
            log.info("alarm %s %s on camera %s (%d objects)", event.rule, event.state.value, result.camera,
                     event.count, extra={"event": f"alarm_{event.state.value}", "alarm_id": event.id})
            self.alarms.submit(event)
        if out.counts:
            self.alarms.publish_counts(result.camera, out.counts)
