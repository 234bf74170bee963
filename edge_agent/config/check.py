"""`edge-agent check-config FILE...`: validate config files without starting anything."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, TextIO

from edge_agent.config.loader import ConfigError, load_config

if TYPE_CHECKING:
    from pathlib import Path


def check_config(paths: list[Path], out: TextIO | None = None) -> int:
    """Print `OK FILE` or one `FILE:LINE: KEY = VALUE: MESSAGE` line per problem; 0 if all valid."""
    # Looked up per call, not bound as a default, so a redirected sys.stdout is honoured.
    out = out if out is not None else sys.stdout
    status = 0
    for path in paths:
        try:
            load_config(path)
        except ConfigError as exc:
            status = 1
            for issue in exc.issues:
                print(issue, file=out)
        else:
            print(f"OK {path}", file=out)
    return status
