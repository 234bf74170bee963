"""Stand-in IP cameras: `rtsp_server.py` run by the system Python, managed from the venv.

    with RtspServer({"cam1": Path("demo/videos/cam1.mp4")}) as cameras:
        url = cameras.url("cam1")   # rtsp://127.0.0.1:<port>/cam1, loops forever at 15 fps
        cameras.pause()             # a hung camera: the socket stays open, nothing arrives
        cameras.kill()              # a dead camera: connections drop, new ones are refused

The server needs GStreamer's RTSP server through PyGObject, which Debian installs for its own
/usr/bin/python3 only; hence a child process rather than an import.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING

from edge_agent.devtools import LOOPBACK, free_loopback_port, stop_process
from edge_agent.devtools.server_process import ServerProcess

if TYPE_CHECKING:
    from collections.abc import Mapping

SYSTEM_PYTHON = Path("/usr/bin/python3")
SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")

_PROBE = ("import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
          "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
          "missing = [e for e in ('multifilesrc', 'qtdemux', 'h264parse', 'rtph264pay') "
          "if Gst.ElementFactory.find(e) is None]; print(' '.join(missing))")


def rtsp_server_unavailable() -> str | None:
    """Why the RTSP server cannot run here (missing system packages), or None."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"{SYSTEM_PYTHON} not found (apt-get install python3 python3-gi)"
    try:
        probe = subprocess.run([str(SYSTEM_PYTHON), "-c", _PROBE], capture_output=True, text=True,  # noqa: S603
                               timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return f"{SYSTEM_PYTHON} did not finish probing GStreamer within 30 s"
    if probe.returncode != 0:
        last = probe.stderr.strip().splitlines()[-1:] or ["?"]
        return (f"GStreamer RTSP server not importable by {SYSTEM_PYTHON}: {last[0]} "
                "(see .ci/apt-packages.txt)")
    if probe.stdout.strip():
        return f"GStreamer elements missing: {probe.stdout.strip()} (see .ci/apt-packages.txt)"
    return None


class RtspServer(ServerProcess):
    """One RTSP server process serving each MP4 at rtsp://127.0.0.1:<port>/<mount>, looped."""

    host = LOOPBACK

    def __init__(self, mounts: Mapping[str, Path], *, port: int | None = None,
                 start_timeout_s: float = 20.0) -> None:
        if not mounts:
            raise ValueError("need at least one mount")
        for name, path in mounts.items():
            if not name or not name.replace("-", "").replace("_", "").isalnum():
                raise ValueError(f"mount names are [A-Za-z0-9_-]+, got {name!r}")
            if not Path(path).is_file():
                raise FileNotFoundError(f"mount {name!r}: no such file {path}")
        self._mounts = {name: Path(path).resolve() for name, path in mounts.items()}
        self._port = port if port is not None else free_loopback_port()
        self._start_timeout_s = start_timeout_s
        self._dir = Path(tempfile.mkdtemp(prefix="rtsp-cameras-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._paused = False

    @property
    def port(self) -> int:
        return self._port

    @property
    def log_path(self) -> Path:
        return self._dir / "rtsp_server.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def url(self, mount: str) -> str:
        if mount not in self._mounts:
            raise KeyError(f"no mount {mount!r}; mounts are {sorted(self._mounts)}")
        return f"rtsp://{self.host}:{self._port}/{mount}"

    def _command(self) -> list[str]:
        cmd = [str(SYSTEM_PYTHON), str(SERVER_SCRIPT), "--port", str(self._port),
               "--workdir", str(self._dir)]
        for name, path in self._mounts.items():
            cmd += ["--mount", f"{name}={path}"]
        return cmd

    def start(self) -> None:
        """Start serving and return once the server printed READY; raises RuntimeError if not."""
        if self.running:
            return
        self._log = self.log_path.open("ab")
        # PYTHONPATH and friends of the venv must not leak into the system interpreter.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        # Fixed interpreter and script, argument list only: no shell sees the mount paths.
        self._proc = subprocess.Popen(self._command(), stdin=subprocess.DEVNULL,  # noqa: S603
                                      stdout=subprocess.PIPE,
                                      stderr=self._log, env=env)
        self._paused = False
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        assert self._proc is not None
        assert self._proc.stdout is not None
        deadline = time.monotonic() + self._start_timeout_s
        expected = f"READY {self._port}".encode()
        seen = b""
        with selectors.DefaultSelector() as sel:
            sel.register(self._proc.stdout, selectors.EVENT_READ)
            while (remaining := deadline - time.monotonic()) > 0:
                if not sel.select(remaining):
                    continue
                chunk = os.read(self._proc.stdout.fileno(), 4096)
                if not chunk:  # stdout closed: the server exited
                    code = self._proc.wait(timeout=5)
                    raise RuntimeError(f"RTSP server exited with {code} at startup:\n{self.log_tail()}")
                seen += chunk
                if expected in seen.splitlines():
                    return
        raise RuntimeError(f"RTSP server not READY within {self._start_timeout_s} s:\n{self.log_tail()}")

    def pause(self) -> None:
        """SIGSTOP: a hung camera whose TCP connections stay open but send nothing."""
        self._signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT after pause(): the stream carries on where it stopped."""
        self._signal(signal.SIGCONT)
        self._paused = False

    def kill(self) -> None:
        """SIGKILL: a camera that dies; open connections reset, new ones are refused."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(timeout=5)
        self._paused = False
        self._close_io()

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._proc is not None:
            if self._paused:  # a stopped process would only see SIGTERM after a SIGCONT
                self._proc.send_signal(signal.SIGCONT)
            stop_process(self._proc, timeout_s)
        self._paused = False
        self._close_io()

    def _signal(self, signum: signal.Signals) -> None:
        if not self.running:
            raise RuntimeError("the RTSP server is not running")
        assert self._proc is not None
        self._proc.send_signal(signum)

    def _close_io(self) -> None:
        """Forget the (exited) process and close our ends of its output."""
        if self._proc is not None and self._proc.stdout is not None:
            self._proc.stdout.close()
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None


