"""`edge-agent run --config FILE`: the daemon in the foreground until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from edge_agent.config.loader import ConfigError, load_config
from edge_agent.daemon import Daemon, DaemonError
from edge_agent.inference.runner import RunnerError
from edge_agent.manifest import ManifestError

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="run the daemon until SIGINT/SIGTERM",
                       description="Run the daemon with a config file, in the foreground.")
    p.add_argument("--config", type=Path, required=True, help="YAML config (see config/example.yaml)")
    p.set_defaults(func=run)


def print_config_error(exc: ConfigError) -> None:
    for issue in exc.issues:
        print(issue, file=sys.stderr)


def start_daemon(config_path: Path) -> Daemon | None:
    """Load config and start; on failure print why and return None."""
    try:
        daemon = Daemon(load_config(config_path))
    except ConfigError as exc:
        print_config_error(exc)
        return None
    try:
        daemon.start()
    except (DaemonError, ManifestError, RunnerError) as exc:
        print(f"edge-agent: cannot start: {exc}", file=sys.stderr)
        daemon.stop(timeout_s=2.0)
        return None
    return daemon


def wait_for_signal() -> None:
    stop = threading.Event()

    def handle(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)
    stop.wait()


def run(args: argparse.Namespace) -> int:
    daemon = start_daemon(args.config)
    if daemon is None:
        return 1
    wait_for_signal()
    daemon.stop()
    return 0
