"""A subscriber that records what the daemon publishes: for the demo's summary and for tests.

Waiting is done on a condition with a deadline (`wait_for`), never by sleeping and polling.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode


@dataclass(frozen=True, slots=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    at_ns: int  # monotonic arrival time

    def json(self) -> Any:
        return json.loads(self.payload)


class MqttWatch:
    """Subscribes to `topic` (wildcards allowed) and keeps every message, bounded to `max_keep`."""

    def __init__(self, host: str, port: int, topic: str, *, username: str | None = None,
                 password: str | None = None, max_keep: int = 100_000, session: str | None = None) -> None:
        self.topic = topic
        self.messages: list[Received] = []
        self._max_keep = max_keep
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        # A named `session` is persistent: the broker keeps its subscription and queues QoS 1
        # messages for it while it is disconnected (a broker restart with persistence included).
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=session or f"watch-{time.monotonic_ns()}",
                                   clean_session=session is None)
        self._client.reconnect_delay_set(min_delay=1, max_delay=2)
        if username is not None:
            self._client.username_pw_set(username, password)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = self._on_message
        self._host, self._port = host, port

    def __enter__(self) -> Self:
        self._client.connect(self._host, self._port, keepalive=30)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            self.close()
            raise TimeoutError(f"no subscription to {self.topic} on {self._host}:{self._port} within 10 s")
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client: mqtt.Client, _u: object, _f: object, rc: ReasonCode, _p: object) -> None:
        if not rc.is_failure:
            client.subscribe(self.topic, qos=1)

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            if len(self.messages) >= self._max_keep:
                del self.messages[: self._max_keep // 10]
            received = Received(msg.topic, bytes(msg.payload), bool(msg.retain), time.monotonic_ns())
            self.messages.append(received)
            self._cond.notify_all()

    def snapshot(self, topic_suffix: str = "") -> list[Received]:
        with self._cond:
            return [m for m in self.messages if m.topic.endswith(topic_suffix)]

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout_s: float) -> bool:
        """Wait until `predicate(messages)` holds; False when the deadline passes first."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not predicate(self.messages):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True
