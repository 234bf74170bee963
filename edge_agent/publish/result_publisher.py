"""The publisher thread: detection results from a bounded queue to MQTT.

JSON encoding and the hand-off to paho happen here, off the inference thread, so a slow broker
or a large message never delays the next batch. When the queue is full the newest result is
dropped and counted: memory stays bounded whatever the broker does.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from edge_agent.messages import DetectionResult
from edge_agent.publish.mqtt_link import MqttLink, encode

log = logging.getLogger(__name__)


class ResultPublisher:
    def __init__(self, link: MqttLink, *, detections_qos: int = 0, queue_size: int = 1024,
                 on_published: Callable[[DetectionResult], None] | None = None) -> None:
        self._link = link
        self.detections_qos = detections_qos
        self._queue: queue.Queue[DetectionResult] = queue.Queue(maxsize=queue_size)
        self._on_published = on_published
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)
        self.published = 0
        self.queue_full_drops = 0

    def set_link(self, link: MqttLink) -> None:
        """Publish through a new connection (broker settings changed); takes effect per message."""
        self._link = link

    def submit(self, result: DetectionResult) -> None:
        try:
            self._queue.put_nowait(result)
        except queue.Full:
            self.queue_full_drops += 1

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> bool:
        """Publish what is queued (within the timeout), then end the thread."""
        self._stop.set()
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            try:
                result = self._queue.get(timeout=0.1)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            self._publish(result)

    def _publish(self, result: DetectionResult) -> None:
        result.stamps.published = time.monotonic_ns()
        link = self._link
        payload = encode(result.payload(link.topics.node))
        if link.publish(link.topics.detections(result.camera), payload, self.detections_qos):
            self.published += 1
        if self._on_published is not None:
            try:
                self._on_published(result)
            except Exception:  # telemetry must never stop publishing
                log.exception("stats hook failed")
