"""The daemon end to end: RTSP cameras -> batches -> MQTT, against real servers on loopback.

The daemon runs as `edge-agent run --config FILE` in a subprocess and is observed only through
what a subscriber receives, as an alarm panel would see it.
"""

import json
import time

import pytest
from harness import CAMERAS, DaemonProcess, write_config

from edge_agent.devtools.mosquitto import MosquittoServer
from edge_agent.devtools.mqtt_watch import MqttWatch, Received

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

TIMINGS = {"decode", "queue", "preprocess", "infer", "postprocess", "publish", "total"}
PREFIX = "edge/test-node"


def _detections(messages: list[Received], camera: str, since_ns: int = 0) -> list[dict]:
    return [m.json() for m in messages
            if m.topic == f"{PREFIX}/{camera}/detections" and m.at_ns >= since_ns]


def _state(messages: list[Received], camera: str) -> str | None:
    states = [m.json()["state"] for m in messages if m.topic == f"{PREFIX}/{camera}/status" and m.payload]
    return states[-1] if states else None


def _first_state_at(messages: list[Received], camera: str, state: str, since_ns: int) -> int | None:
    for m in messages:
        if m.topic == f"{PREFIX}/{camera}/status" and m.payload and m.at_ns >= since_ns \
                and m.json()["state"] == state:
            return m.at_ns
    return None


def _rate(watch: MqttWatch, camera: str, window_s: float) -> float:
    """Detections per second of one camera over a window that starts now (waits for it)."""
    start = time.monotonic_ns()
    watch.wait_for(lambda _m: time.monotonic_ns() - start >= window_s * 1e9, window_s + 1)
    return len(_detections(watch.snapshot(), camera, start)) / window_s


def _start(tmp_path, broker, cameras, **config) -> DaemonProcess:
    urls = {name: server.url(name) for name, server in cameras.items()}
    cfg = write_config(tmp_path / "config.yaml", broker_port=broker.port, cameras=urls, **config)
    return DaemonProcess(cfg, tmp_path / "daemon.log")


def test_three_cameras_publish_detections_with_timings(tmp_path, broker, cameras):
    """Every camera's detections arrive with model, boxes in camera pixels and every stage timing."""
    with MqttWatch(broker.host, broker.port, f"{PREFIX}/#") as watch, _start(tmp_path, broker, cameras) as d:
        enough = watch.wait_for(lambda m: all(len(_detections(m, c)) >= 15 for c in CAMERAS), 60)
        assert enough, d.log()[-3000:]
        messages = watch.snapshot()
        labels = set()
        for camera in CAMERAS:
            docs = _detections(messages, camera)
            frames = [doc["frame"] for doc in docs]
            assert frames == sorted(frames), "per-camera frames arrive in order"
            assert len(set(frames)) == len(frames), "no frame published twice"
            for doc in docs:
                assert doc["schema"] == 1
                assert (doc["node"], doc["camera"]) == ("test-node", camera)
                assert set(doc["timings_ms"]) == TIMINGS
                assert doc["timings_ms"]["total"] > 0
                assert doc["timings_ms"]["infer"] > 0
                assert doc["model"]["name"] == "demo-parts"
                assert 1 <= doc["batch_size"] <= 4
                assert abs(doc["captured_at"] - time.time()) < 60
                for obj in doc["objects"]:
                    x1, y1, x2, y2 = obj["box"]
                    assert 0 <= x1 < x2 <= 1280
                    assert 0 <= y1 < y2 <= 720
                    labels.add(obj["label"])
            assert _state(messages, camera) == "online"
        assert labels <= {"nut", "washer", "bracket", "scratch"}
        assert len(labels) >= 3, f"the demo videos show several classes, saw {labels}"
        assert any(m.topic == f"{PREFIX}/available" and m.payload == b"online" for m in messages)
        assert watch.wait_for(lambda m: any(x.topic == f"{PREFIX}/stats" for x in m), 10)
        stats = next(m.json() for m in watch.snapshot() if m.topic == f"{PREFIX}/stats")
        assert set(stats["cameras"]) == set(CAMERAS)
        assert set(stats["stages_ms"]) == TIMINGS


def test_dead_camera_reconnects_and_never_stalls_the_others(tmp_path, broker, cameras):
    """cam1's server killed: cam1 reconnecting, cam2/cam3 keep their rate; back: online again."""
    with MqttWatch(broker.host, broker.port, f"{PREFIX}/#") as watch, _start(tmp_path, broker, cameras) as d:
        started = watch.wait_for(lambda m: all(len(_detections(m, c)) >= 10 for c in CAMERAS), 60)
        assert started, d.log()[-3000:]
        before = {c: _rate(watch, c, 3.0) for c in ("cam2", "cam3")}
        killed_ns = time.monotonic_ns()
        cameras["cam1"].kill()
        assert watch.wait_for(lambda m: _first_state_at(m, "cam1", "reconnecting", killed_ns) is not None, 15)
        after = {c: _rate(watch, c, 3.0) for c in ("cam2", "cam3")}
        for camera in ("cam2", "cam3"):
            assert after[camera] >= 0.75 * before[camera], (before, after)
        restarted_ns = time.monotonic_ns()
        cameras["cam1"].restart()
        assert watch.wait_for(lambda m: _first_state_at(m, "cam1", "online", restarted_ns) is not None, 15)
        assert watch.wait_for(lambda m: len(_detections(m, "cam1", restarted_ns)) >= 5, 15)


def test_hung_camera_is_marked_stalled_within_twice_its_timeout(tmp_path, broker, cameras):
    """SIGSTOP the server (socket stays open): `stalled` within 2 x stall_timeout_s, then recovers."""
    stall_timeout_s = 2.0
    with MqttWatch(broker.host, broker.port, f"{PREFIX}/#") as watch, \
            _start(tmp_path, broker, cameras, stall_timeout_s=stall_timeout_s) as d:
        assert watch.wait_for(lambda m: len(_detections(m, "cam2")) >= 10, 60), d.log()[-3000:]
        paused_ns = time.monotonic_ns()
        cameras["cam2"].pause()
        assert watch.wait_for(lambda m: _first_state_at(m, "cam2", "stalled", paused_ns) is not None,
                              3 * stall_timeout_s)
        stalled_ns = _first_state_at(watch.snapshot(), "cam2", "stalled", paused_ns)
        assert (stalled_ns - paused_ns) / 1e9 <= 2 * stall_timeout_s
        others_ns = time.monotonic_ns()
        others = ("cam1", "cam3")
        assert watch.wait_for(lambda m: all(len(_detections(m, c, others_ns)) >= 5 for c in others), 10)
        resumed_ns = time.monotonic_ns()
        cameras["cam2"].resume()
        assert watch.wait_for(lambda m: len(_detections(m, "cam2", resumed_ns)) >= 3, 30), d.log()[-3000:]


def test_refused_credentials_are_reported_and_never_connected(tmp_path, servers_available, cameras):
    """Wrong password: a clear 'refused ... not authorised' error, and no `online` ever published."""
    with MosquittoServer(username="edge", password="right-secret") as broker:
        secret = tmp_path / "mqtt-password"
        secret.write_text("wrong-secret\n")
        with MqttWatch(broker.host, broker.port, "edge/#", username="edge",
                       password="right-secret") as watch, \
                _start(tmp_path, broker, cameras,
                       extra_mqtt={"username": "edge", "password_file": str(secret)}) as d:
            assert d.wait_for_log("refused the connection", 30), d.log()[-3000:]
            assert "not authori" in d.log().lower()
            # The daemon keeps running (cameras and inference too) and retries; still never online.
            assert d.proc.poll() is None
            assert not watch.wait_for(lambda m: any(x.topic.endswith("/available") for x in m), 3)
            assert f"MQTT 127.0.0.1:{broker.port}: connected" not in d.log()


def test_sigterm_publishes_offline_and_exits(tmp_path, broker, cameras):
    """SIGTERM: cameras marked disabled, `offline` published (retained), exit code 0."""
    with MqttWatch(broker.host, broker.port, f"{PREFIX}/#") as watch:
        d = _start(tmp_path, broker, cameras)
        assert watch.wait_for(lambda m: len(_detections(m, "cam1")) >= 3, 60), d.log()[-3000:]
        assert d.terminate(timeout_s=10) == 0, d.log()[-3000:]
        assert watch.wait_for(lambda m: any(x.topic == f"{PREFIX}/available" and x.payload == b"offline"
                                            for x in m), 5)
        assert all(_state(watch.snapshot(), c) == "disabled" for c in CAMERAS)
        status = json.loads(next(m.payload for m in reversed(watch.snapshot())
                                 if m.topic == f"{PREFIX}/cam1/status"))
        assert status["reason"] == "edge-agent stopped"
