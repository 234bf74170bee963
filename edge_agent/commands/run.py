"""`edge-agent run --config FILE`: the daemon in the foreground, as systemd runs it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge_agent.config.loader import ConfigError
from edge_agent.service import Service


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="run the daemon until SIGINT/SIGTERM (SIGHUP reloads the config)",
                       description="Run the daemon with a config file, in the foreground. SIGHUP, an "
                                   "edit of the file or the MQTT command cmd/config/reload reload it; "
                                   "SIGINT/SIGTERM stop it within 5 s. Speaks systemd's notify protocol "
                                   "when NOTIFY_SOCKET is set.")
    p.add_argument("--config", type=Path, required=True, help="YAML config (see config/example.yaml)")
    p.set_defaults(func=lambda args: Service(args.config).run())


def print_config_error(exc: ConfigError) -> None:
    for issue in exc.issues:
        print(issue, file=sys.stderr)
