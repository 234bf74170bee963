"""systemd integration (notify protocol, watchdog, the unit file) and the HTTP metrics endpoint."""

import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from harness import DEMO_VIDEOS, REPO, write_config

from edge_agent.config.loader import load_config
from edge_agent.control.systemd import Notifier, WatchdogPinger, watchdog_interval_s
from edge_agent.daemon import Daemon
from edge_agent.devtools import free_loopback_port
from edge_agent.inference.loading import open_model
from edge_agent.telemetry.http_metrics import Health, MetricsServer, MetricsSources


class NotifyListener:
    """The systemd side of NOTIFY_SOCKET: a datagram socket collecting messages with arrival times."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data.decode()))

    def wait_for(self, field: str, timeout_s: float, after: float = 0.0) -> float | None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for at, msg in list(self.messages):
                if at >= after and field in msg.split("\n"):
                    return at
            time.sleep(0.05)
        return None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def listener(tmp_path):
    sock = NotifyListener(tmp_path / "notify.sock")
    yield sock
    sock.close()


def test_notifier_sends_to_the_socket(listener):
    """READY=1 and STATUS= arrive as one datagram; without NOTIFY_SOCKET nothing is sent."""
    notifier = Notifier(str(listener.path))
    assert notifier.notify("READY=1", "STATUS=ok")
    assert listener.wait_for("READY=1", 5) is not None
    assert not Notifier("").notify("READY=1")


@pytest.mark.parametrize(
    ("env", "expected"),
    [({"WATCHDOG_USEC": "10000000"}, 5.0), ({}, None), ({"WATCHDOG_USEC": "junk"}, None),
     ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}, None)],
)
def test_watchdog_interval_is_half_the_timeout(env, expected):
    """Ping at half of WatchdogSec, and only when the watchdog is meant for this process."""
    assert watchdog_interval_s(env) == expected


class BlockingRunner:
    """Wraps the real runner; `block` makes the next infer() hang like a stuck GPU call."""

    def __init__(self, runner) -> None:
        self._runner = runner
        self.block = threading.Event()
        self.release = threading.Event()
        self.blocked = threading.Event()
        self.inputs, self.outputs = runner.inputs, runner.outputs

    def warmup(self, *args) -> None:
        self._runner.warmup(*args)

    def infer(self, batch):
        if self.block.is_set():
            self.blocked.set()
            self.release.wait(30)
        return self._runner.infer(batch)

    def close(self) -> None:
        self._runner.close()


@pytest.mark.timeout(120)
def test_watchdog_pings_stop_while_inference_is_blocked(tmp_path, listener):
    """Pings flow while batches run; a hung inference thread stops them; they resume after."""
    runners: list[BlockingRunner] = []

    def opener(*args, **kwargs):
        model = open_model(*args, **kwargs)
        runners.append(BlockingRunner(model.detector.runner))
        model.detector.runner = runners[-1]
        return model

    cfg = write_config(tmp_path / "c.yaml", broker_port=free_loopback_port(),
                       cameras={"cam1": str(DEMO_VIDEOS / "cam1.mp4")})
    daemon = Daemon(load_config(cfg), model_opener=opener)
    daemon.start()
    pinger = WatchdogPinger(Notifier(str(listener.path)), 0.2, lambda: daemon.hot_path_alive(0.5),
                            lambda: "test")
    pinger.start()
    try:
        assert listener.wait_for("WATCHDOG=1", 10) is not None
        runners[0].block.set()
        assert runners[0].blocked.wait(10)
        blocked_at = time.monotonic()
        deadline = blocked_at + 10
        while pinger.missed < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pinger.missed >= 3
        # After the hot path went quiet (0.5 s of grace), no ping went out.
        assert listener.wait_for("WATCHDOG=1", 0.5, after=blocked_at + 0.5 + 0.25) is None
        runners[0].block.clear()
        runners[0].release.set()
        assert listener.wait_for("WATCHDOG=1", 10, after=time.monotonic()) is not None
    finally:
        pinger.stop()
        daemon.stop()


def test_unit_file_verifies_cleanly(tmp_path):
    """`systemd-analyze verify` of the shipped unit prints nothing on stderr."""
    analyze = shutil.which("systemd-analyze")
    units = Path("/usr/lib/systemd/system")
    if analyze is None or not (units / "sysinit.target").exists():
        pytest.skip("systemd-analyze or systemd's units are not installed (apt-get install systemd)")
    root = tmp_path / "root"
    exe = root / "opt/edge-agent/venv/bin/edge-agent"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    (root / "bin").mkdir()
    shutil.copy2("/bin/kill", root / "bin/kill")
    shutil.copytree(units, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy2(REPO / "systemd/edge-agent.service", root / "etc/systemd/system/")
    out = subprocess.run([analyze, "verify", f"--root={root}", "/etc/systemd/system/edge-agent.service"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.stderr == ""
    assert out.returncode == 0
    unit = (REPO / "systemd/edge-agent.service").read_text()
    for needed in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "EnvironmentFile=", "ProtectSystem=strict",
                   "ReadWritePaths=", "NoNewPrivileges=true", "PrivateTmp=true", "ProtectHome=true",
                   "ExecReload=/bin/kill -HUP $MAINPID", "DeviceAllow=/dev/nvidiactl"):
        assert needed in unit


def test_metrics_and_healthz_endpoints():
    """/metrics exposes counters, histograms and the model; /healthz follows the hot path."""
    alive = threading.Event()
    alive.set()
    from edge_agent.telemetry.stats import CameraCounters

    sources = MetricsSources(
        cameras=lambda: {"cam1": CameraCounters(10, 9, 1, 2, 0, "online")},
        loop_counters=lambda: (4, 9, 0),
        model=lambda: ("demo-parts", "1.0.0", "ab" * 32),
        mqtt_connected=lambda: True,
        health=lambda: Health(alive.is_set(), {"cameras": {"cam1": "online"}}),
        gpu=lambda: [{"index": 0, "name": "H200", "utilization_percent": 37}],
    )
    server = MetricsServer("127.0.0.1", free_loopback_port(), sources)
    server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        body = urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()  # noqa: S310
        assert 'edge_agent_frames_dropped_total{camera="cam1"} 1.0' in body
        assert 'edge_agent_camera_reconnects_total{camera="cam1"} 2.0' in body
        assert 'edge_agent_model_info{name="demo-parts",sha256="' in body
        assert "edge_agent_stage_seconds_bucket" in body
        assert 'edge_agent_gpu_utilization_percent{gpu="0",name="H200"} 37.0' in body
        assert urllib.request.urlopen(f"{base}/healthz", timeout=5).status == 200  # noqa: S310
        alive.clear()
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{base}/healthz", timeout=5)  # noqa: S310
        assert err.value.code == 503
    finally:
        server.stop()


def test_json_log_lines_carry_named_events(capsys):
    """--log-format json writes one JSON object per line with the event name and extra fields."""
    import json
    import logging

    from edge_agent.telemetry.logs import configure

    configure("INFO", "json")
    logging.getLogger("edge_agent.test").info("camera %s stalled", "cam1",
                                               extra={"event": "camera_stalled", "camera": "cam1"})
    line = capsys.readouterr().err.strip().splitlines()[-1]
    doc = json.loads(line)
    assert (doc["event"], doc["camera"], doc["msg"], doc["level"]) == ("camera_stalled", "cam1",
                                                                      "camera cam1 stalled", "info")
    configure("INFO", "text")
