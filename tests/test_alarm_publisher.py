"""Alarm delivery through the spool: in order, none lost across outages and restarts, retried with
backoff; counts and snapshots retained. The broker is a fake at the publish boundary; the real one
is exercised by the end-to-end tests."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest

from edge_agent.analytics.events import AlarmEvent, AlarmState
from edge_agent.messages import ModelRef
from edge_agent.publish.alarm_publisher import AlarmPublisher
from edge_agent.publish.alarm_spool import AlarmSpool
from edge_agent.publish.mqtt_link import Topics

WAIT_S = 20.0  # generous: only a hang reaches it


class FakeBroker:
    """An `AckingPublisher` whose broker can be down, refuse the first N messages, or lose a PUBACK
    (the message arrives, the sender is not told). `received` is what subscribers got."""

    def __init__(self, *, refuse_first: int = 0, lose_ack_of: int | None = None) -> None:
        self.topics = Topics("edge", "node-a")
        self.up = True
        self.refuse_first = refuse_first
        self.lose_ack_of = lose_ack_of  # the attempt number whose PUBACK is lost
        self.attempts = 0
        self.received: list[tuple[str, bytes]] = []
        self.retained: dict[str, bytes] = {}
        self.changed = threading.Condition()

    def publish(self, topic: str, payload: bytes, qos: int = 0, *, retain: bool = False) -> bool:
        assert qos == 1
        if retain:
            self.retained[topic] = payload
        return True

    def publish_acked(self, topic: str, payload: bytes, timeout_s: float) -> bool:
        assert timeout_s > 0
        with self.changed:
            self.attempts += 1
            self.changed.notify_all()
            if not self.up or self.attempts <= self.refuse_first:
                return False
            self.received.append((topic, payload))
            self.changed.notify_all()
            return self.attempts != self.lose_ack_of

    def wait_attempts(self, count: int, timeout_s: float = WAIT_S) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: self.attempts >= count, timeout_s)

    def messages(self) -> list[tuple[str, int, str]]:
        return [(doc["id"], doc["seq"], doc["state"]) for doc in (json.loads(p) for _, p in self.received)]


def _event(alarm: int, seq: int = 0) -> AlarmEvent:
    state = AlarmState.START if seq == 0 else AlarmState.UPDATE
    return AlarmEvent(id=f"alarm-{alarm}", seq=seq, state=state, camera="cam1", rule="dwell", zone="belt",
                      line=None, labels=("nut",), track_ids=(alarm,), count=1, started_at=1.7e9 + alarm,
                      at=1.7e9 + alarm + seq, frame=10 * alarm + seq, model=ModelRef("m", "1", "ab" * 32))


def _publisher(broker: FakeBroker, spool_dir: Path) -> AlarmPublisher:
    return AlarmPublisher(broker, AlarmSpool(spool_dir), ack_timeout_s=1.0, retry_initial_s=0.01, retry_max_s=0.05)


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


def test_delivered_in_order_once_after_refusals(spool_dir: Path):
    """The first three attempts fail: the head is retried, nothing overtakes it, nothing repeats."""
    broker = FakeBroker(refuse_first=3)
    publisher = _publisher(broker, spool_dir)
    publisher.start()
    for k in range(5):
        assert publisher.submit(_event(k))
    assert publisher.wait_drained(WAIT_S)
    assert publisher.stop()
    assert broker.messages() == [(f"alarm-{k}", 0, "start") for k in range(5)]
    assert {topic for topic, _ in broker.received} == {"edge/node-a/alarms"}
    assert (publisher.delivered, publisher.retries) == (5, 3)


def test_outage_and_restart_lose_nothing(spool_dir: Path):
    """Broker away: messages wait on disk; the daemon restarts (new publisher, same folder) and
    spools more; when the broker is back every message arrives once, in submission order."""
    broker = FakeBroker()
    broker.up = False
    first = _publisher(broker, spool_dir)
    first.start()
    for k in range(3):
        first.submit(_event(k))
    assert broker.wait_attempts(2)  # it is trying, and failing
    assert first.stop()
    assert len(first.spool) == 3

    second = _publisher(broker, spool_dir)
    second.submit(_event(1, seq=1))
    second.submit(_event(3))
    second.start()
    with broker.changed:
        broker.up = True
    assert second.wait_drained(WAIT_S)
    assert second.stop()
    assert broker.messages() == [("alarm-0", 0, "start"), ("alarm-1", 0, "start"), ("alarm-2", 0, "start"),
                                 ("alarm-1", 1, "update"), ("alarm-3", 0, "start")]


def test_a_lost_ack_repeats_a_message_that_subscribers_drop_by_id_and_seq(spool_dir: Path):
    """At-least-once: a message whose PUBACK was lost is sent again; (id, seq) identifies the repeat."""
    broker = FakeBroker(lose_ack_of=2)
    publisher = _publisher(broker, spool_dir)
    publisher.start()
    for k in range(3):
        publisher.submit(_event(k))
    assert publisher.wait_drained(WAIT_S)
    assert publisher.stop()
    got = broker.messages()
    assert got == [("alarm-0", 0, "start"), ("alarm-1", 0, "start"), ("alarm-1", 0, "start"),
                   ("alarm-2", 0, "start")]
    assert list(dict.fromkeys(got)) == [(f"alarm-{k}", 0, "start") for k in range(3)]


def test_stop_is_prompt_while_the_broker_is_away(spool_dir: Path):
    """Stopping does not wait for a broker that is not there; the messages stay spooled."""
    broker = FakeBroker()
    broker.up = False
    publisher = _publisher(broker, spool_dir)
    publisher.start()
    publisher.submit(_event(0))
    assert broker.wait_attempts(1)
    assert publisher.stop()
    assert len(AlarmSpool(spool_dir)) == 1


def test_submit_reports_a_spool_that_cannot_write(spool_dir: Path):
    """A disk that refuses the write is counted and reported, not raised into the caller."""
    publisher = _publisher(FakeBroker(), spool_dir)
    shutil.rmtree(spool_dir)
    assert not publisher.submit(_event(0))
    assert publisher.spool_errors == 1


def test_counts_are_retained_and_sent_only_when_changed(spool_dir: Path):
    """Each count is a retained topic under the camera; unchanged values are not sent again."""
    broker = FakeBroker()
    publisher = _publisher(broker, spool_dir)
    assert publisher.publish_counts("cam1", {"counts/belt/all": 2, "counts/belt/nut": 2}) == 2
    assert publisher.publish_counts("cam1", {"counts/belt/all": 3, "counts/belt/nut": 2}) == 1
    assert publisher.publish_counts("cam2", {"counts/belt/all": 3}) == 1
    assert broker.retained == {"edge/node-a/cam1/counts/belt/all": b"3", "edge/node-a/cam1/counts/belt/nut": b"2",
                               "edge/node-a/cam2/counts/belt/all": b"3"}
    publisher.set_link(broker)  # a new connection starts from nothing
    assert publisher.publish_counts("cam1", {"counts/belt/all": 3, "counts/belt/nut": 2}) == 2


def test_snapshot_is_retained_per_camera(spool_dir: Path):
    broker = FakeBroker()
    assert _publisher(broker, spool_dir).publish_snapshot("cam1", b"\xff\xd8jpeg")
    assert broker.retained == {"edge/node-a/cam1/snapshot": b"\xff\xd8jpeg"}
