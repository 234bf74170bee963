"""The real servers the integration tests stand on: Mosquitto, and RTSP cameras playing our videos."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import av
import paho.mqtt.client as mqtt
import pytest

from edge_agent.devtools.mosquitto import MosquittoServer, broker_answers, mosquitto_unavailable
from edge_agent.devtools.rtsp import RtspServer, rtsp_server_unavailable
from edge_agent.synthetic.video import VideoSpec, write_video

pytestmark = pytest.mark.integration

# How the agent opens cameras: TCP, a 2 s socket timeout, and no probing delay.
RTSP_OPTIONS = {"rtsp_transport": "tcp", "timeout": "2000000", "probesize": "32768",
                "analyzeduration": "0", "fflags": "nobuffer"}
CLIP = VideoSpec(seconds=2.0, seed=7)  # 30 frames: reading 40 crosses the loop point
EVENT_WAIT_S = 5.0
USERNAME, PASSWORD = "edge", "s3cret"  # a throwaway broker's test account


def _skip_if(reason: str | None) -> None:
    if reason is not None:
        print(f"skipping: {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    write_video(path, CLIP, path.with_suffix(".json"))
    return path


@pytest.fixture(scope="module")
def rtsp_available() -> None:
    _skip_if(rtsp_server_unavailable())


@pytest.fixture
def broker() -> Iterator[MosquittoServer]:
    _skip_if(mosquitto_unavailable())
    with MosquittoServer(username=USERNAME, password=PASSWORD) as server:
        yield server


@pytest.fixture
def cameras(rtsp_available: None, clip: Path) -> Iterator[RtspServer]:
    with RtspServer({"cam1": clip}) as server:
        yield server


class Session:
    """A paho client on its network thread, with events for what the tests wait on."""

    def __init__(self, broker: MosquittoServer, password: str) -> None:
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.received = threading.Event()
        self.reason: mqtt.ReasonCode | None = None
        self.messages: list[mqtt.MQTTMessage] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.username_pw_set(USERNAME, password)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_args: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port, keepalive=10)
        self.client.loop_start()

    def _on_connect(self, _client: mqtt.Client, _userdata: object, _flags: object,
                    reason: mqtt.ReasonCode, _props: object) -> None:
        self.reason = reason
        self.connected.set()

    def _on_message(self, _client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        self.messages.append(message)
        self.received.set()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_mosquitto_delivers_a_published_message(broker: MosquittoServer) -> None:
    """A subscriber receives what another client publishes, with the right credentials."""
    sub, pub = Session(broker, PASSWORD), Session(broker, PASSWORD)
    try:
        assert sub.connected.wait(EVENT_WAIT_S), broker.log_tail()
        assert pub.connected.wait(EVENT_WAIT_S), broker.log_tail()
        assert sub.reason is not None
        assert not sub.reason.is_failure
        sub.client.subscribe("edge/test/#", qos=1)
        assert sub.subscribed.wait(EVENT_WAIT_S)
        pub.client.publish("edge/test/hello", b'{"n": 1}', qos=1).wait_for_publish(EVENT_WAIT_S)
        assert sub.received.wait(EVENT_WAIT_S)
        assert [(m.topic, m.payload) for m in sub.messages] == [("edge/test/hello", b'{"n": 1}')]
    finally:
        sub.close()
        pub.close()


def test_mosquitto_refuses_a_bad_password(broker: MosquittoServer) -> None:
    """A wrong password gets a CONNACK that says not authorized."""
    session = Session(broker, "wrong")
    try:
        assert session.connected.wait(EVENT_WAIT_S), broker.log_tail()
        assert session.reason is not None
        assert session.reason.is_failure
        assert session.reason == "Not authorized"
    finally:
        session.close()


def test_mosquitto_restarts_on_the_same_port(broker: MosquittoServer) -> None:
    """After stop() nothing answers; restart() answers again on the same port."""
    port = broker.port
    assert broker_answers(broker.host, port, 2.0)
    broker.stop()
    assert not broker_answers(broker.host, port, 0.5)
    broker.restart()
    assert broker.port == port
    assert broker_answers(broker.host, port, 2.0)


def test_broker_answers_is_false_without_a_broker() -> None:
    """A closed port is reported as no broker, within the timeout."""
    start = time.monotonic()
    assert not broker_answers("127.0.0.1", 1, 1.0)
    assert time.monotonic() - start < 2.0


def test_synthetic_clip_is_camera_like(clip: Path) -> None:
    """The clip has the spec's size and length, a keyframe every second, and parts moving right."""
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == (CLIP.width, CLIP.height)
        keyframes = [i for i, packet in enumerate(p for p in container.demux(stream) if p.size)
                     if packet.is_keyframe]
    assert keyframes == list(range(0, CLIP.frame_count, CLIP.gop_frames))
    frames = json.loads(clip.with_suffix(".json").read_text())["frames"]
    assert len(frames) == CLIP.frame_count
    step_px = CLIP.belt_speed / CLIP.fps * CLIP.height
    left_edges: dict[int, list[float]] = {}
    for boxes in frames:
        for track_id, _cls, x1, _y1, x2, _y2 in boxes:
            if x1 > 0 and x2 < CLIP.width:  # fully inside: its box moves with the part
                left_edges.setdefault(track_id, []).append(x1)
    moves = [b - a for xs in left_edges.values() for a, b in itertools.pairwise(xs)]
    assert moves
    assert all(abs(m - step_px) < 1.0 for m in moves)


def _read_frames(container: av.container.InputContainer, count: int) -> list[av.VideoFrame]:
    frames = []
    for frame in container.decode(video=0):
        frames.append(frame)
        if len(frames) == count:
            break
    return frames


def _read_for(container: av.container.InputContainer, seconds: float) -> None:
    """Decode until the stream fails; frames already in flight still decode first."""
    start = time.monotonic()
    for _frame in container.decode(video=0):
        assert time.monotonic() - start < seconds, f"frames kept coming for {seconds} s"


def test_rtsp_camera_streams_in_real_time(cameras: RtspServer) -> None:
    """A mount loops the clip at about its frame rate, 1280x720, with increasing timestamps."""
    with av.open(cameras.url("cam1"), options=RTSP_OPTIONS) as container:
        assert _read_frames(container, 1)
        start_ns = time.monotonic_ns()
        frames = _read_frames(container, 40)
        elapsed_s = (time.monotonic_ns() - start_ns) / 1e9
    assert len(frames) == 40
    assert {(f.width, f.height) for f in frames} == {(1280, 720)}
    assert all(b.pts > a.pts for a, b in itertools.pairwise(frames))
    assert 8 <= len(frames) / elapsed_s <= 25


def test_rtsp_camera_serves_two_clients(cameras: RtspServer) -> None:
    """Two readers of one mount both get frames from the shared pipeline."""
    with (av.open(cameras.url("cam1"), options=RTSP_OPTIONS) as first,
          av.open(cameras.url("cam1"), options=RTSP_OPTIONS) as second):
        assert len(_read_frames(first, 5)) == 5
        assert len(_read_frames(second, 5)) == 5


def test_paused_camera_times_out_the_read(cameras: RtspServer) -> None:
    """After SIGSTOP the connection stays open but the read fails with a timeout."""
    with av.open(cameras.url("cam1"), options=RTSP_OPTIONS) as container:
        assert _read_frames(container, 1)
        cameras.pause()
        try:
            with pytest.raises(av.FFmpegError):
                _read_for(container, 10.0)
        finally:
            cameras.resume()


def test_killed_camera_refuses_until_restarted(cameras: RtspServer) -> None:
    """After SIGKILL a new open fails; restart() serves again at the same URL."""
    url = cameras.url("cam1")
    cameras.kill()
    with pytest.raises(av.FFmpegError):
        av.open(url, options=RTSP_OPTIONS)
    cameras.restart()
    assert cameras.url("cam1") == url
    with av.open(url, options=RTSP_OPTIONS) as container:
        frames = _read_frames(container, 3)
    assert [(f.width, f.height) for f in frames] == [(1280, 720)] * 3
