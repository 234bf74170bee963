"""`edge-agent check-config FILE...`: validate config files without starting anything."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge_agent.config.check import check_config


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("check-config", help="validate config files; exit 1 on any problem",
                       description="Validate config files. Prints OK FILE, or one line per problem: "
                                   "FILE:LINE: KEY = VALUE: what is allowed. Exit 1 on any problem.")
    p.add_argument("files", type=Path, nargs="+", metavar="FILE")
    p.set_defaults(func=lambda args: check_config(args.files))
