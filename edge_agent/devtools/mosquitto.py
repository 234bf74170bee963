"""A private Mosquitto broker on a free loopback port, for tests, the demo and benchmarks.

    with MosquittoServer(username="agent", password="secret") as broker:
        client.connect(broker.host, broker.port)
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO

from edge_agent.devtools import LOOPBACK, free_loopback_port, stop_process
from edge_agent.devtools.server_process import ServerProcess

MOSQUITTO = Path("/usr/sbin/mosquitto")
MOSQUITTO_PASSWD = Path("/usr/bin/mosquitto_passwd")

_CONNACK = 0x20
_POLL_S = 0.02  # how often start() looks again while the broker comes up


def mosquitto_unavailable() -> str | None:
    """Why a broker cannot be started here (a missing system package), or None."""
    for binary in (MOSQUITTO, MOSQUITTO_PASSWD):
        if not os.access(binary, os.X_OK):
            return f"{binary} not found: apt-get install mosquitto (see .ci/apt-packages.txt)"
    return None


def _connect_packet(client_id: str) -> bytes:
    """An MQTT 3.1.1 CONNECT with a clean session and no credentials."""
    cid = client_id.encode()
    variable = b"\x00\x04MQTT" + bytes([4, 0x02]) + (10).to_bytes(2, "big")  # level 4, clean, keepalive 10 s
    body = variable + len(cid).to_bytes(2, "big") + cid
    return bytes([0x10, len(body)]) + body  # body < 128 bytes: one length byte


def broker_answers(host: str, port: int, timeout_s: float) -> bool:
    """True when an MQTT broker at host:port answers a CONNECT within `timeout_s`.

    Any CONNACK counts, a refusal for missing credentials too: the question is whether a broker
    is there and working. A TCP connect alone is not enough, since a hung (SIGSTOPped) broker's
    kernel still accepts connections.
    """
    deadline = time.monotonic() + timeout_s
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(_connect_packet(f"probe-{os.getpid()}"))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            sock.settimeout(remaining)
            reply = sock.recv(4)
            if reply[:1] == bytes([_CONNACK]):
                sock.sendall(b"\xe0\x00")  # DISCONNECT, so the broker logs a clean goodbye
                return True
            return False
    except OSError:  # refused, unreachable, timed out, reset
        return False


class MosquittoServer(ServerProcess):
    """Runs /usr/sbin/mosquitto on 127.0.0.1 with its own config, password file and log.

    Without a username the broker allows anonymous clients; with one, only that user. Persistence
    is off, so a restart forgets retained messages and sessions, like a replaced broker.
    """

    host = LOOPBACK

    def __init__(self, *, username: str | None = None, password: str | None = None,
                 port: int | None = None, start_timeout_s: float = 10.0, persistence: bool = False) -> None:
        if (username is None) != (password is None):
            raise ValueError("give both username and password, or neither")
        if username is not None and (not username or ":" in username):
            raise ValueError(f"username must be non-empty and without ':', got {username!r}")
        self._username, self._password = username, password
        # Persistence keeps sessions (a subscriber's subscriptions and its queued QoS 1 messages)
        # across a restart, like a production broker; off, a restart forgets everything.
        self._persistence = persistence
        self._port = port if port is not None else free_loopback_port()
        self._start_timeout_s = start_timeout_s
        self._dir = Path(tempfile.mkdtemp(prefix="mosquitto-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        try:
            self._config_path = self._write_config()
        except BaseException:
            shutil.rmtree(self._dir, ignore_errors=True)
            raise

    @property
    def port(self) -> int:
        return self._port

    @property
    def log_path(self) -> Path:
        return self._dir / "mosquitto.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _write_config(self) -> Path:
        persist = ["persistence true", f"persistence_location {self._dir}/"] if self._persistence \
            else ["persistence false"]
        lines = [f"listener {self._port} {LOOPBACK}", *persist,
                 "log_dest stderr", "log_type error", "log_type warning", "log_type notice",
                 "log_type information", "log_timestamp true", "connection_messages true"]
        if os.geteuid() == 0:
            # As root, mosquitto drops to user "mosquitto" before reading the password file,
            # which then cannot read our root-owned temp dir.
            lines.append("user root")
        if self._username is not None and self._password is not None:
            passwd = self._dir / "passwd"
            # A fixed binary and an argument list: nothing goes through a shell. (-b puts the
            # password on the command line, where `ps` shows it: fine for a test broker only.)
            cmd = [str(MOSQUITTO_PASSWD), "-c", "-b", str(passwd), self._username, self._password]
            subprocess.run(cmd, check=True, capture_output=True, timeout=10)  # noqa: S603
            lines += [f"password_file {passwd}", "allow_anonymous false"]
        else:
            lines.append("allow_anonymous true")
        path = self._dir / "mosquitto.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self) -> None:
        """Start the broker and return once it answers MQTT; raises RuntimeError if it does not."""
        if self.running:
            return
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen([str(MOSQUITTO), "-c", str(self._config_path)],  # noqa: S603
                                      stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self._start_timeout_s
        while time.monotonic() < deadline:
            if broker_answers(self.host, self._port, min(0.5, self._start_timeout_s)):
                return
            try:
                code = self._proc.wait(timeout=_POLL_S)  # wakes at once if the broker exits
            except subprocess.TimeoutExpired:
                continue
            self._close_log()
            raise RuntimeError(f"mosquitto exited with {code} at startup:\n{self.log_tail()}")
        self.stop()
        raise RuntimeError(f"mosquitto did not answer on {self.host}:{self._port} within "
                           f"{self._start_timeout_s} s:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._proc is not None:
            stop_process(self._proc, timeout_s)
            self._proc = None
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


