"""Alarm delivery: every alarm message goes to the on-disk spool first, then one sender thread
publishes the spool's head at QoS 1, waits for the broker's PUBACK, and only then removes it.

One message in flight at a time keeps the order across outages and restarts exactly: while the
broker is away the head is retried with a growing delay, and nothing behind it overtakes it.
The cost is one broker round trip per alarm, which alarms (a few per minute, not per frame) can
afford. Delivery is at-least-once: a PUBACK lost with a dying connection means the message is
sent again, and subscribers drop repeats by the message's (id, seq).

Zone and line counts go out retained (QoS 1), only when they change; the link republishes
retained topics itself after a reconnect, so they need no spool. So does a camera's snapshot.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Protocol

from edge_agent.analytics.events import AlarmEvent
from edge_agent.publish.alarm_spool import AlarmSpool
from edge_agent.publish.mqtt_link import Topics, encode

log = logging.getLogger(__name__)

ALARM_QOS = 1


class AckingPublisher(Protocol):
    """What the alarm publisher needs from the MQTT link (`MqttLink` provides it)."""

    @property
    def topics(self) -> Topics: ...

    def publish(self, topic: str, payload: bytes, qos: int = 0, *, retain: bool = False) -> bool:
        """Hand a message over without waiting; False when it was dropped."""
        ...

    def publish_acked(self, topic: str, payload: bytes, timeout_s: float) -> bool:
        """Publish at QoS 1 and wait for the PUBACK; False when not acknowledged within the timeout
        (or not connected). Called again with the same message, waits for a copy still in flight
        rather than sending a second one."""
        ...


def alarms_topic(topics: Topics) -> str:
    return f"{topics.base}/alarms"


def camera_topic(topics: Topics, camera: str, suffix: str) -> str:
    """`{prefix}/{node}/{camera}/{suffix}`, e.g. suffix `counts/dock/nut` or `snapshot`."""
    return f"{topics.base}/{camera}/{suffix}"


class AlarmPublisher:
    def __init__(self, link: AckingPublisher, spool: AlarmSpool, *, ack_timeout_s: float = 5.0,
                 retry_initial_s: float = 0.5, retry_max_s: float = 15.0) -> None:
        self._link = link
        self._spool = spool
        self.ack_timeout_s = ack_timeout_s
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self._stop = threading.Event()
        self._wake = threading.Event()  # set by submit: a new message may be waiting
        self._drained = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="alarm-publisher", daemon=True)
        self._last_counts: dict[str, dict[str, int]] = {}  # camera -> suffix -> value published
        self.delivered = 0
        self.retries = 0
        self.spool_errors = 0

    @property
    def spool(self) -> AlarmSpool:
        return self._spool

    def set_link(self, link: AckingPublisher) -> None:
        """Publish through a new connection from the next attempt on; counts are sent again."""
        self._link = link
        self._last_counts.clear()

    def submit(self, event: AlarmEvent) -> bool:
        """Spool `event` durably (fsync: call it off the inference thread); False if the disk refused."""
        try:
            self._spool.append(encode(event.payload(self._link.topics.node)))
        except OSError as exc:
            self.spool_errors += 1
            log.error("alarm %s %s of %s/%s not spooled: %s", event.id, event.state.value, event.camera,
                      event.rule, exc)
            return False
        self._wake.set()
        return True

    def publish_counts(self, camera: str, counts: Mapping[str, int]) -> int:
        """Publish the counts that changed since the last call, retained; returns how many."""
        last = self._last_counts.setdefault(camera, {})
        link = self._link
        changed = 0
        for suffix, value in counts.items():
            if last.get(suffix) == value:
                continue
            # Recorded whatever publish() says: the link keeps retained topics and sends them again
            # after a reconnect, so retrying here would only queue stale values.
            link.publish(camera_topic(link.topics, camera, suffix), str(value).encode(), ALARM_QOS, retain=True)
            last[suffix] = value
            changed += 1
        return changed

    def publish_snapshot(self, camera: str, jpeg: bytes) -> bool:
        """The camera's latest alarm snapshot, retained on `{prefix}/{node}/{camera}/snapshot`."""
        link = self._link
        return link.publish(camera_topic(link.topics, camera, "snapshot"), jpeg, ALARM_QOS, retain=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float | None = None) -> bool:
        """End the sender after its current attempt; what is undelivered stays spooled for the next
        run. The default timeout covers one attempt's wait for a PUBACK. True if joined."""
        self._stop.set()
        self._wake.set()
        self._thread.join(self.ack_timeout_s + 1.0 if timeout_s is None else timeout_s)
        return not self._thread.is_alive()

    def wait_drained(self, timeout_s: float) -> bool:
        """Block until the spool is empty (every message acknowledged); False on timeout."""
        with self._drained:
            return self._drained.wait_for(lambda: len(self._spool) == 0, timeout_s)

    def _run(self) -> None:
        delay_s = self.retry_initial_s
        while not self._stop.is_set():
            self._wake.clear()  # before peek: a submit after the peek sets it again
            head = self._spool.peek()
            if head is None:
                with self._drained:
                    self._drained.notify_all()
                self._wake.wait(1.0)
                continue
            if self._send(head.payload):
                self._spool.ack(head.seq)
                self.delivered += 1
                delay_s = self.retry_initial_s
                continue
            self.retries += 1
            self._stop.wait(delay_s)
            delay_s = min(delay_s * 2, self.retry_max_s)

    def _send(self, payload: bytes) -> bool:
        link = self._link
        try:
            return link.publish_acked(alarms_topic(link.topics), payload, self.ack_timeout_s)
        except Exception:  # a failing link must not end the only alarm sender; the head is retried
            log.exception("publishing an alarm failed")
            return False
