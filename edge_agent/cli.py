"""The `edge-agent` command: one subcommand per module in `edge_agent.commands`."""

from __future__ import annotations

import argparse

from edge_agent.commands import bench, check_config, demo, infer, model, run
from edge_agent.telemetry import logs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description="Edge video analytics: RTSP cameras, batched YOLO inference, MQTT out.",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="default INFO (logs go to stderr)")
    parser.add_argument("--log-format", default="text", choices=["text", "json"],
                        help="json: one JSON object per line with a named event (for journald)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run.add_parser(sub)
    demo.add_parser(sub)
    check_config.add_parser(sub)
    infer.add_parser(sub)
    model.add_parser(sub)
    bench.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.log_level, args.log_format)
    return int(args.func(args))
