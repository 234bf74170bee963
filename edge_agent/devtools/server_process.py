"""What the test servers share: a child process with its own temp folder and log, used as a
context manager that cleans up even when start-up fails."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import TracebackType
from typing import Self


class ServerProcess:
    """Subclasses set `_dir` and `log_path`, and implement `start()` and `stop()`."""

    _dir: Path

    @property
    def log_path(self) -> Path:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def stop(self, timeout_s: float = 5.0) -> None:
        raise NotImplementedError

    def restart(self) -> None:
        """Stop (or reap a killed process) and start again on the same port."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop and delete the temp folder (config, log, data)."""
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def log_tail(self, max_chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-max_chars:]
        except FileNotFoundError:
            return ""

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
