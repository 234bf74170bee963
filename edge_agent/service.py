"""The daemon as a service: config reload triggers, systemd notify, metrics, and signals.

`edge-agent run` is this: SIGHUP reloads, SIGINT/SIGTERM stop (within 5 s), READY=1 once the
model is warm and the cameras are started, WATCHDOG=1 while the hot path makes progress.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from types import FrameType

from edge_agent.config.loader import ConfigError, load_config
from edge_agent.control.model_manager import ModelManager
from edge_agent.control.reloader import RELOAD_COMMAND, ConfigReloader
from edge_agent.control.systemd import Notifier, WatchdogPinger, watchdog_interval_s
from edge_agent.daemon import Daemon
from edge_agent.publish.mqtt_link import MqttLink, encode
from edge_agent.telemetry.http_metrics import Health, MetricsServer, MetricsSources

log = logging.getLogger(__name__)

SHUTDOWN_BUDGET_S = 4.5  # systemd and operators expect an exit within 5 s of SIGTERM
# The hot path counts as stuck when an inference worker has not come back for this long
# (it returns at least every 0.1 s while idle, and after each batch).
DEFAULT_HOT_PATH_MAX_AGE_S = 5.0


class Service:
    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.stop_requested = threading.Event()
        self.daemon: Daemon | None = None
        self.reloader: ConfigReloader | None = None
        self.metrics: MetricsServer | None = None
        self.manager: ModelManager | None = None
        self.notifier = Notifier()

    def _status_line(self) -> str:
        d = self.daemon
        if d is None:
            return "starting"
        online = sum(1 for s in d.statuses.values() if s.state.value == "online")
        model = d.model.label if d.model else "no model"
        mqtt = "mqtt up" if d.mqtt_connected else "mqtt down"
        return f"{online}/{len(d.sources)} cameras online, {model}, {mqtt}"

    def _health(self, max_age_s: float) -> Health:
        d = self.daemon
        alive = d is not None and d.hot_path_alive(max_age_s)
        detail = {"cameras": {n: s.state.value for n, s in d.statuses.items()} if d else {},
                  "mqtt_connected": bool(d and d.mqtt_connected)}
        return Health(alive, detail)

    def _attach_commands(self, link: MqttLink) -> None:
        reloader = self.reloader
        if reloader is not None:
            link.on_command(link.topics.command(RELOAD_COMMAND), lambda _payload: reloader.request("mqtt"))

    def _publish_reload_result(self, result: dict[str, object]) -> None:
        link = self.daemon.link if self.daemon else None
        if link is not None:
            link.publish(link.topics.command_result(RELOAD_COMMAND), encode(result), qos=1)

    def _start_metrics(self, daemon: Daemon, max_age_s: float) -> None:
        cfg = daemon.config.metrics
        if not cfg.enabled:
            return
        sources = MetricsSources(
            cameras=daemon.camera_counters,
            loop_counters=lambda: (daemon.loop.batches, daemon.loop.frames, daemon.loop.errors)
            if daemon.loop else (0, 0, 0),
            model=lambda: (m.manifest.name, m.manifest.version, m.manifest.sha256)
            if (m := daemon.model) else None,
            mqtt_connected=lambda: daemon.mqtt_connected,
            health=lambda: self._health(max_age_s),
            gpu=lambda: daemon.gpu_stats.snapshot() if daemon.gpu_stats else [],
        )
        try:
            self.metrics = MetricsServer(cfg.host, cfg.port, sources)
        except OSError as exc:  # metrics are for humans; cameras must run regardless
            log.error("metrics endpoint %s:%d unavailable: %s", cfg.host, cfg.port, exc)
            return
        daemon.on_published.append(self.metrics.observe)
        self.metrics.start()

    def run(self) -> int:
        try:
            config = load_config(self.config_path)
        except ConfigError as exc:
            log.error("invalid config, not starting:\n%s", exc, extra={"event": "config_rejected"})
            return 1
        manager: ModelManager | None = None
        if config.store is not None:
            # With a model store, the store's active version is served (the config's model file
            # only seeds a fresh node), and versions move by signed pull commands.
            self.daemon = daemon = Daemon(config)
            manager = ModelManager(daemon, config.store, config.p2p)
            manager.bootstrap(config)
            daemon.model_opener = manager.model_opener
            daemon.on_link_created.append(manager.attach)
        else:
            self.daemon = daemon = Daemon(config)
        self.manager = manager
        self.reloader = ConfigReloader(self.config_path, daemon.apply, self._publish_reload_result)
        daemon.on_link_created.append(self._attach_commands)
        watchdog_s = watchdog_interval_s()
        max_age_s = max(DEFAULT_HOT_PATH_MAX_AGE_S, watchdog_s or 0.0)
        self._start_metrics(daemon, max_age_s)
        self._install_signals()
        try:
            daemon.start()
        except Exception:
            log.exception("cannot start", extra={"event": "start_failed"})
            daemon.stop(timeout_s=2.0)
            self._stop_metrics()
            return 1
        self.reloader.start(watch=config.watch_config)
        if manager is not None:
            manager.start()
        self.notifier.notify("READY=1", f"STATUS={self._status_line()}")
        pinger = None
        if watchdog_s is not None:
            pinger = WatchdogPinger(self.notifier, watchdog_s, lambda: daemon.hot_path_alive(watchdog_s),
                                    self._status_line)
            pinger.start()
        self.stop_requested.wait()
        started = time.monotonic()
        self.notifier.notify("STOPPING=1", "STATUS=stopping")
        if pinger is not None:
            pinger.stop(0.5)
        self.reloader.stop(0.5)
        if manager is not None:
            manager.stop()
        daemon.stop(timeout_s=max(0.5, SHUTDOWN_BUDGET_S - (time.monotonic() - started)))
        self._stop_metrics()
        self.notifier.close()
        return 0

    def _stop_metrics(self) -> None:
        if self.metrics is not None:
            self.metrics.stop()

    def _install_signals(self) -> None:
        def stop(signum: int, _frame: FrameType | None) -> None:
            log.info("received %s, stopping", signal.Signals(signum).name, extra={"event": "signal"})
            self.stop_requested.set()

        def reload(_signum: int, _frame: FrameType | None) -> None:
            if self.reloader is not None:
                self.reloader.request("SIGHUP")

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGHUP, reload)
