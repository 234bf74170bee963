"""The MQTT connection: one explicit state, a last will, retained state that survives reconnects.

paho-mqtt's network thread reconnects on its own; this class only tracks what the broker said.
A refused connection (bad credentials, not authorised) is its own state, logged once per change,
and never mistaken for being connected.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger(__name__)

# Bounds what paho buffers while the broker is away; QoS 0 detections beyond it are dropped and
# counted, while the daemon keeps running on bounded memory.
MAX_QUEUED_MESSAGES = 10_000


class LinkState(StrEnum):
    DISCONNECTED = "disconnected"
    CONNECTED = "connected"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class MqttEndpoint:
    host: str
    port: int
    client_id: str
    keepalive_s: int = 30
    username: str | None = None
    password: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None


class Topics:
    """Topic names under `{prefix}/{node}/`."""

    def __init__(self, prefix: str, node: str) -> None:
        self.node = node
        self.base = f"{prefix}/{node}"
        self.available = f"{self.base}/available"
        self.stats = f"{self.base}/stats"

    def detections(self, camera: str) -> str:
        return f"{self.base}/{camera}/detections"

    def status(self, camera: str) -> str:
        return f"{self.base}/{camera}/status"

    def command(self, name: str) -> str:
        """Commands in, e.g. `cmd/config/reload`; each is answered on `<command>/result`."""
        return f"{self.base}/cmd/{name}"

    def command_result(self, name: str) -> str:
        return f"{self.base}/cmd/{name}/result"


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


class MqttLink:
    def __init__(self, endpoint: MqttEndpoint, topics: Topics,
                 on_state: Callable[[LinkState, str], None] | None = None) -> None:
        self.endpoint = endpoint
        self.topics = topics
        self._on_state = on_state
        self._lock = threading.Lock()
        self._retained: dict[str, bytes] = {}  # republished after every (re)connect
        # Commands: topic -> handler, run on paho's network thread, so handlers only enqueue.
        self._handlers: dict[str, Callable[[bytes], None]] = {}
        self._unacked: dict[tuple[str, bytes], mqtt.MQTTMessageInfo] = {}
        self.state = LinkState.DISCONNECTED
        self.last_reason = "not connected yet"
        self.connected_event = threading.Event()
        self.dropped = 0
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=endpoint.client_id,
                             protocol=mqtt.MQTTv311)
        client.will_set(topics.available, b"offline", qos=1, retain=True)
        if endpoint.username is not None:
            client.username_pw_set(endpoint.username, endpoint.password)
        if endpoint.tls_ca or endpoint.tls_cert:
            client.tls_set(ca_certs=endpoint.tls_ca, certfile=endpoint.tls_cert, keyfile=endpoint.tls_key)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.max_queued_messages_set(MAX_QUEUED_MESSAGES)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client

    def start(self) -> None:
        """Connect in the background; the daemon runs whether or not the broker is there."""
        self._client.connect_async(self.endpoint.host, self.endpoint.port, self.endpoint.keepalive_s)
        self._client.loop_start()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Publish `offline` (the will only fires on an unclean end), then disconnect."""
        if self.state == LinkState.CONNECTED:
            info = self._client.publish(self.topics.available, b"offline", qos=1, retain=True)
            info.wait_for_publish(timeout_s)
        self._client.disconnect()
        self._client.loop_stop()

    def publish(self, topic: str, payload: bytes, qos: int = 0, *, retain: bool = False) -> bool:
        """Hand a message to the client; False when it was dropped (not connected, queue full)."""
        if retain:
            with self._lock:
                self._retained[topic] = payload
        if self.state != LinkState.CONNECTED and not retain and qos == 0:
            self.dropped += 1
            return False
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            self.dropped += 1
            return False
        return True

    def publish_acked(self, topic: str, payload: bytes, timeout_s: float) -> bool:
        """Publish at QoS 1 and wait for the broker's PUBACK; False if not connected or not
        acknowledged within `timeout_s`. A message paho already holds (sent, then the connection
        dropped) is waited on again, not published again: paho resends it itself after the
        reconnect, and a second copy would reach subscribers twice."""
        key = (topic, payload)
        with self._lock:
            info = self._unacked.get(key)
        if info is None:
            if self.state != LinkState.CONNECTED:
                return False
            info = self._client.publish(topic, payload, qos=1)
            if info.rc == mqtt.MQTT_ERR_NO_CONN:
                # The socket died under this publish: paho keeps the message and resends it after
                # the reconnect, but leaves rc at NO_CONN, which makes wait_for_publish raise.
                info.rc = mqtt.MQTT_ERR_SUCCESS
            elif info.rc != mqtt.MQTT_ERR_SUCCESS:
                return False  # not queued (queue full): nothing in flight; the caller retries
            with self._lock:
                self._unacked[key] = info
        info.wait_for_publish(timeout_s)
        if not info.is_published():
            return False
        with self._lock:
            self._unacked = {k: i for k, i in self._unacked.items() if not i.is_published()}
        return True

    def on_command(self, topic: str, handler: Callable[[bytes], None]) -> None:
        """Route messages on `topic` (a filter: `+`/`#` allowed) to `handler`; subscribed now and
        after every reconnect."""
        with self._lock:
            self._handlers[topic] = handler
        if self.state == LinkState.CONNECTED:
            self._client.subscribe(topic, qos=1)

    def _on_message(self, _client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            matching = [h for f, h in self._handlers.items() if mqtt.topic_matches_sub(f, msg.topic)]
        for handler in matching:
            try:
                handler(bytes(msg.payload))
            except Exception:  # a bad command must not kill paho's network thread
                log.exception("MQTT command handler for %s failed", msg.topic)

    def clear_retained(self, topic: str) -> None:
        """Remove a retained message from the broker (an empty retained payload deletes it)."""
        with self._lock:
            self._retained.pop(topic, None)
        self._client.publish(topic, b"", qos=1, retain=True)

    def _set_state(self, state: LinkState, reason: str) -> None:
        changed = state != self.state or reason != self.last_reason
        self.state, self.last_reason = state, reason
        if state == LinkState.CONNECTED:
            self.connected_event.set()
        else:
            self.connected_event.clear()
        if not changed:
            return
        where = f"{self.endpoint.host}:{self.endpoint.port}"
        if state == LinkState.REFUSED:
            log.error("MQTT broker %s refused the connection: %s", where, reason)
        else:
            log.info("MQTT %s: %s (%s)", where, state.value, reason)
        if self._on_state:
            self._on_state(state, reason)

    def _on_connect(self, client: mqtt.Client, _userdata: object, _flags: object,
                    reason_code: ReasonCode, _properties: object) -> None:
        if reason_code.is_failure:
            self._set_state(LinkState.REFUSED, str(reason_code))
            return
        client.publish(self.topics.available, b"online", qos=1, retain=True)
        with self._lock:
            retained = list(self._retained.items())
            commands = list(self._handlers)
        for topic, payload in retained:
            client.publish(topic, payload, qos=1, retain=True)
        for topic in commands:
            client.subscribe(topic, qos=1)
        self._set_state(LinkState.CONNECTED, "connected")

    def _on_disconnect(self, _client: mqtt.Client, _userdata: object, _flags: object,
                       reason_code: ReasonCode, _properties: object) -> None:
        if self.state == LinkState.REFUSED:
            return  # keep the refusal visible: it is the reason we are not connected
        self._set_state(LinkState.DISCONNECTED, str(reason_code))
