"""systemd's notify protocol, without libsystemd: datagrams to $NOTIFY_SOCKET.

READY=1 once cameras are started and the model is warm, STATUS= a one-line summary, STOPPING=1 on
shutdown, and WATCHDOG=1 only while the hot path makes progress: if the inference thread hangs,
the pings stop and systemd restarts the service (`WatchdogSec=` in the unit).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Notifier:
    """Sends notify messages; a no-op when not started by systemd (no NOTIFY_SOCKET)."""

    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self._address: str | None = None
        self._sock: socket.socket | None = None
        if address:
            # A leading '@' names a socket in Linux's abstract namespace.
            self._address = "\0" + address[1:] if address.startswith("@") else address
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *fields: str) -> bool:
        if self._sock is None or self._address is None:
            return False
        try:
            self._sock.sendto("\n".join(fields).encode(), self._address)
        except OSError as exc:
            log.warning("sd_notify failed: %s", exc)
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval_s(environ: dict[str, str] | None = None) -> float | None:
    """Half of systemd's watchdog timeout (as systemd recommends), or None if there is none."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(int(usec) / 1e6 / 2, 0.05)
    except ValueError:
        return None


class WatchdogPinger:
    """Pings WATCHDOG=1 every `interval_s` while `alive()` holds, with a STATUS= line each time."""

    def __init__(self, notifier: Notifier, interval_s: float, alive: Callable[[], bool],
                 status: Callable[[], str]) -> None:
        self._notifier = notifier
        self.interval_s = interval_s
        self._alive = alive
        self._status = status
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sd-watchdog", daemon=True)
        self.missed = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 1.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            if self._alive():
                self._notifier.notify("WATCHDOG=1", f"STATUS={self._status()}")
            else:
                self.missed += 1
                log.error("hot path made no progress; withholding the systemd watchdog ping",
                          extra={"event": "watchdog_withheld"})
