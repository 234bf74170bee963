"""The `edge-agent` command: one subcommand per module in `edge_agent.commands`."""

from __future__ import annotations

import argparse
import logging
import sys

from edge_agent.commands import check_config, demo, infer, run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description="Edge video analytics: RTSP cameras, batched YOLO inference, MQTT out.",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="default INFO (logs go to stderr)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run.add_parser(sub)
    demo.add_parser(sub)
    check_config.add_parser(sub)
    infer.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.func(args))
