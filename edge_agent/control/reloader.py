"""Live config reload: from a file change, SIGHUP or the MQTT command, one at a time.

Every trigger only enqueues; one control thread validates the whole file and applies it, so a
slow model load never blocks paho's network thread or a signal handler. An invalid file changes
nothing: the daemon keeps its running config and the reasons (file, line, key) are logged and
published on `cmd/config/reload/result`.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from edge_agent.config.loader import ConfigError, load_config
from edge_agent.config.schema import EdgeConfig
from edge_agent.control.config_diff import ConfigDiff

log = logging.getLogger(__name__)

RELOAD_COMMAND = "config/reload"
# Editors write a file in several steps (truncate, write, rename); reload once they settle.
SETTLE_S = 0.3


class _ConfigFileEvents(FileSystemEventHandler):
    """Watches the config's folder, not the file: saving by rename replaces the file's inode."""

    def __init__(self, path: Path, notify: Callable[[], None]) -> None:
        self._path = path
        self._notify = notify

    def on_any_event(self, event: FileSystemEvent) -> None:
        paths = {event.src_path, getattr(event, "dest_path", "")}
        if any(p and Path(str(p)).resolve() == self._path for p in paths):
            self._notify()


class ConfigReloader:
    def __init__(self, path: Path, apply: Callable[[EdgeConfig], ConfigDiff],
                 publish_result: Callable[[dict[str, Any]], None]) -> None:
        self.path = path.resolve()
        self._apply = apply
        self._publish_result = publish_result
        self._requests: queue.Queue[str] = queue.Queue(maxsize=16)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="config-reload", daemon=True)
        self._observer: Any = None
        self._file_changed_at: float | None = None
        self._digest = self._file_digest()
        self.results: list[dict[str, Any]] = []  # most recent last, bounded

    def _file_digest(self) -> str | None:
        try:
            return hashlib.sha256(self.path.read_bytes()).hexdigest()
        except OSError:
            return None

    def start(self, *, watch: bool) -> None:
        self._thread.start()
        if watch:
            observer = Observer()
            observer.schedule(_ConfigFileEvents(self.path, self._on_file_event), str(self.path.parent))
            observer.daemon = True
            observer.start()
            self._observer = observer

    def stop(self, timeout_s: float = 1.0) -> None:
        self._stop.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout_s)
        self._thread.join(timeout_s)

    def request(self, trigger: str) -> None:
        """Ask for a reload (any thread, signal handlers included: it never blocks)."""
        try:
            self._requests.put_nowait(trigger)
        except queue.Full:
            log.warning("config reload requests are piling up; dropping trigger %s", trigger)

    def _on_file_event(self) -> None:
        self._file_changed_at = time.monotonic()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                trigger = self._requests.get(timeout=0.1)
            except queue.Empty:
                changed_at = self._file_changed_at
                if changed_at is None or time.monotonic() - changed_at < SETTLE_S:
                    continue
                self._file_changed_at = None
                digest = self._file_digest()
                if digest is None or digest == self._digest:
                    continue  # touched, or saved unchanged: nothing to do
                trigger = "file change"
            self._reload(trigger)

    def _reload(self, trigger: str) -> None:
        self._digest = self._file_digest()
        try:
            config = load_config(self.path)
        except ConfigError as exc:
            issues = [{"file": i.file, "line": i.line, "key": i.key, "value": repr(i.value),
                       "message": i.message} for i in exc.issues]
            log.error("config rejected (%s), keeping the running config:\n%s", trigger, exc,
                      extra={"event": "config_rejected"})
            self._finish({"status": "rejected", "trigger": trigger, "issues": issues})
            return
        try:
            change = self._apply(config)
        except Exception as exc:  # a model that will not load, classes it lacks: keep running
            log.exception("config valid but not applied (%s)", trigger, extra={"event": "config_rejected"})
            self._finish({"status": "rejected", "trigger": trigger,
                          "issues": [{"file": str(self.path), "line": None, "key": "", "value": "",
                                      "message": str(exc)}]})
            return
        self._finish({"status": "applied", "trigger": trigger, "changes": change.summary})

    def _finish(self, result: dict[str, Any]) -> None:
        result = {"schema": 1, "file": str(self.path), "at": round(time.time(), 3), **result}
        self.results = [*self.results[-19:], result]
        try:
            self._publish_result(result)
        except Exception:  # the broker being away must not lose the reload itself
            log.exception("could not publish the reload result")
