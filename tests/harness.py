"""Running the daemon as a user would: a subprocess with a config file, watched over MQTT."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Self

import yaml

REPO = Path(__file__).resolve().parent.parent
DEMO_VIDEOS = REPO / "demo" / "videos"
CAMERAS = ("cam1", "cam2", "cam3")


def write_config(path: Path, *, broker_port: int, cameras: dict[str, str], node: str = "test-node",
                 stall_timeout_s: float = 2.0, extra_mqtt: dict | None = None,
                 model: dict | None = None, stats_interval_s: float = 1.0) -> Path:
    doc = {
        "node": {"name": node},
        "mqtt": {"host": "127.0.0.1", "port": broker_port, **(extra_mqtt or {})},
        "model": {"path": str(REPO / "models" / "demo-parts.onnx"), "max_batch": 4, "max_wait_ms": 10,
                  "threads": 1, **(model or {})},
        "cameras": [
            {"name": name, "url": url, "stall_timeout_s": stall_timeout_s, "open_timeout_s": 3,
             "reconnect": {"initial_s": 0.2, "max_s": 1.0}}
            for name, url in cameras.items()
        ],
        "stats_interval_s": stats_interval_s,
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


class DaemonProcess:
    """`edge-agent run --config FILE` in a subprocess; stderr goes to a file the test can read."""

    def __init__(self, config: Path, log_path: Path) -> None:
        self.config = config
        self.log_path = log_path
        self._log = log_path.open("wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "run", "--config", str(config)],
            stdout=self._log, stderr=subprocess.STDOUT, env=env,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout_s: float) -> bool:
        """Bounded wait for a line in the daemon's log (it is a file; there is no event to wait on)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if text.lower() in self.log().lower():
                return True
            if self.proc.poll() is not None:
                return text.lower() in self.log().lower()
            time.sleep(0.1)
        return False

    def wait_for_log_count(self, pattern: str, count: int, timeout_s: float) -> bool:
        """Bounded wait until `pattern` (a regex) matches at least `count` times in the log."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if len(re.findall(pattern, self.log())) >= count:
                return True
            time.sleep(0.1)
        return False

    def terminate(self, timeout_s: float = 10.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.terminate()
