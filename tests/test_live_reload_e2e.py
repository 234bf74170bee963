"""Live config edits on a running daemon (subprocess), observed over MQTT; SIGHUP; SIGTERM; notify."""

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from harness import DaemonProcess, write_config
from test_systemd_and_metrics import NotifyListener

from edge_agent.devtools.mqtt_watch import MqttWatch, Received

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

PREFIX = "edge/test-node"


def _frames(messages: list[Received], camera: str) -> list[tuple[int, int]]:
    """(arrival ns, frame number) of a camera's detections."""
    return [(m.at_ns, m.json()["frame"]) for m in messages if m.topic == f"{PREFIX}/{camera}/detections"]


def _results(messages: list[Received]) -> list[dict]:
    return [m.json() for m in messages if m.topic == f"{PREFIX}/cmd/config/reload/result"]


def _save_like_an_editor(path, doc) -> None:
    """Write a new version to a temp file and rename it over the old one (vim, most editors)."""
    tmp = path.with_name(path.name + ".swp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    tmp.replace(path)


def _dropped(messages: list[Received], camera: str, since_ns: int) -> int:
    """Frames of a camera overwritten in its slot (counted drops), per the stats messages."""
    return sum(m.json()["cameras"].get(camera, {}).get("dropped", 0) for m in messages
               if m.topic == f"{PREFIX}/stats" and m.at_ns >= since_ns)


def _assert_continuous(watch: MqttWatch, camera: str, since_ns: int) -> None:
    """The camera was never restarted (numbers only grow, one by one), and any number missing is a
    drop the daemon counted (inference slower than the camera on a loaded machine), not a loss."""
    stats_wait_ns = time.monotonic_ns()
    watch.wait_for(lambda m: any(x.topic == f"{PREFIX}/stats" and x.at_ns > stats_wait_ns for x in m), 5)
    messages = watch.snapshot()
    numbers = [n for at, n in _frames(messages, camera) if at >= since_ns]
    assert numbers == sorted(set(numbers)), f"{camera} restarted or repeated frames: {numbers}"
    missing = (numbers[-1] - numbers[0] + 1) - len(numbers)
    assert missing <= _dropped(messages, camera, since_ns), f"{camera} lost frames: {numbers}"


@pytest.fixture
def running(tmp_path, broker, cameras):
    urls = {name: server.url(name) for name, server in cameras.items()}
    cfg = write_config(tmp_path / "config.yaml", broker_port=broker.port, cameras={"cam1": urls["cam1"],
                                                                                 "cam2": urls["cam2"]})
    with MqttWatch(broker.host, broker.port, f"{PREFIX}/#") as watch, \
            DaemonProcess(cfg, tmp_path / "daemon.log") as daemon:
        assert watch.wait_for(lambda m: all(len(_frames(m, c)) >= 10 for c in ("cam1", "cam2")), 60), \
            daemon.log()[-3000:]
        yield cfg, urls, watch, daemon


def test_add_remove_and_edit_cameras_touch_only_those(running):
    """Add cam3 (it starts), change cam2's URL (only cam2 restarts), remove cam2: cam1 never misses a frame."""
    cfg, urls, watch, daemon = running
    doc = yaml.safe_load(cfg.read_text())
    start_ns = time.monotonic_ns()
    doc["cameras"].append({**doc["cameras"][0], "name": "cam3", "url": urls["cam3"]})
    _save_like_an_editor(cfg, doc)
    assert watch.wait_for(lambda m: len(_frames(m, "cam3")) >= 5, 30), daemon.log()[-3000:]
    assert _results(watch.snapshot())[-1]["changes"] == ["camera cam3 added"]

    cam2_before = max(n for _, n in _frames(watch.snapshot(), "cam2"))
    assert cam2_before > 10
    edit_ns = time.monotonic_ns()
    doc["cameras"][1]["url"] = urls["cam3"]  # cam2 now watches camera 3's stream
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))  # in-place save this time
    assert watch.wait_for(lambda m: len(_results(m)) >= 2, 30)
    assert _results(watch.snapshot())[-1]["changes"] == ["camera cam2 changed: url"]
    # Restarted: its numbering starts again (frame 1 itself may be a counted drop, so any low number).
    assert watch.wait_for(lambda m: any(n <= 5 for at, n in _frames(m, "cam2") if at > edit_ns), 30), \
        "cam2 restarted: its frame numbers start again"

    doc["cameras"] = [c for c in doc["cameras"] if c["name"] != "cam2"]
    _save_like_an_editor(cfg, doc)
    assert watch.wait_for(lambda m: any(m_.topic == f"{PREFIX}/cam2/status" and m_.payload == b""
                                        for m_ in m), 30), "removed camera's retained status cleared"
    statuses = [m for m in watch.snapshot() if m.topic == f"{PREFIX}/cam2/status"]
    assert statuses[-2].json()["state"] == "disabled"
    settle_ns = time.monotonic_ns()
    assert watch.wait_for(lambda m: len([1 for at, _ in _frames(m, "cam1") if at > settle_ns]) >= 10, 20)
    _assert_continuous(watch, "cam1", start_ns)
    _assert_continuous(watch, "cam3", start_ns)


def test_invalid_edit_is_rejected_with_its_line_and_nothing_stops(running):
    """A broken value: the result names file, line and key; detections keep flowing."""
    cfg, _urls, watch, daemon = running
    text = cfg.read_text()
    lines = text.splitlines()
    bad_line = next(i for i, line in enumerate(lines, 1) if "max_batch" in line)
    cfg.write_text(text.replace("max_batch: 4", "max_batch: 999"))
    assert watch.wait_for(lambda m: len(_results(m)) >= 1, 30), daemon.log()[-3000:]
    result = _results(watch.snapshot())[-1]
    assert result["status"] == "rejected"
    (issue,) = result["issues"]
    assert (issue["file"], issue["line"], issue["key"]) == (str(cfg), bad_line, "model.max_batch")
    assert "64" in issue["message"]
    assert "config rejected" in daemon.log()
    after_ns = time.monotonic_ns()
    assert watch.wait_for(lambda m: all(len([1 for at, _ in _frames(m, c) if at > after_ns]) >= 5
                                        for c in ("cam1", "cam2")), 20)


def test_sighup_and_mqtt_command_reload(running, broker):
    """SIGHUP and `cmd/config/reload` each validate and apply the file, answering on /result."""
    cfg, _urls, watch, daemon = running
    cfg.write_text(cfg.read_text().replace("max_wait_ms: 10", "max_wait_ms: 12"))
    # The file watcher may also see this edit; SIGHUP must produce its own answer either way.
    watch.wait_for(lambda m: len(_results(m)) >= 1, 5)
    before = len(_results(watch.snapshot()))
    daemon.proc.send_signal(signal.SIGHUP)
    assert watch.wait_for(lambda m: len(_results(m)) > before, 20)
    assert _results(watch.snapshot())[-1]["trigger"] == "SIGHUP"
    subprocess.run(["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-q", "1",
                    "-t", f"{PREFIX}/cmd/config/reload", "-m", "{}"], check=True, timeout=10)
    assert watch.wait_for(lambda m: any(r["trigger"] == "mqtt" for r in _results(m)), 20)
    assert daemon.proc.poll() is None


@pytest.mark.timeout(120)
def test_notify_protocol_and_clean_sigterm(tmp_path, broker, cameras):
    """READY after start, WATCHDOG while running, STOPPING on SIGTERM; exit 0 within 5 s, offline sent."""
    listener = NotifyListener(tmp_path / "notify.sock")
    urls = {name: server.url(name) for name, server in cameras.items()}
    cfg = write_config(tmp_path / "config.yaml", broker_port=broker.port, cameras=urls)
    env = {**os.environ, "NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "1000000",
           "PYTHONUNBUFFERED": "1"}
    log = (tmp_path / "daemon.log").open("wb")
    try:
        with MqttWatch(broker.host, broker.port, f"{PREFIX}/#") as watch:
            proc = subprocess.Popen([sys.executable, "-m", "edge_agent", "run", "--config", str(cfg)],
                                    stdout=log, stderr=subprocess.STDOUT, env=env)
            try:
                assert listener.wait_for("READY=1", 60) is not None
                assert listener.wait_for("WATCHDOG=1", 10) is not None
                assert any(m.startswith("STATUS=") for _, msg in listener.messages for m in msg.split("\n"))
                assert watch.wait_for(lambda m: len(_frames(m, "cam1")) >= 3, 30)
                sent = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(10) == 0
                assert time.monotonic() - sent < 5.0
            finally:
                if proc.poll() is None:
                    proc.kill()
            assert listener.wait_for("STOPPING=1", 2) is not None
            assert watch.wait_for(lambda m: any(x.topic == f"{PREFIX}/available" and x.payload == b"offline"
                                                for x in m), 5)
    finally:
        log.close()
        listener.close()
