"""Small, pure policies of a camera source: reconnect backoff and the detection-rate gate."""

from __future__ import annotations

import random


class Backoff:
    """Exponential backoff with jitter. Jitter keeps a fleet of cameras that dropped together (a
    switch rebooting) from all hammering the network again at the same instant."""

    def __init__(self, initial_s: float, max_s: float, rng: random.Random | None = None) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.attempt = 0
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography

    def next_delay_s(self) -> float:
        """Delay before the next attempt: half the exponential step fixed, half random."""
        step = min(self.max_s, self.initial_s * 2.0 ** self.attempt)
        self.attempt += 1
        return step / 2 + self._rng.uniform(0, step / 2)

    def reset(self) -> None:
        self.attempt = 0


class RateGate:
    """Keeps at most `fps` frames per second of stream time; None keeps every frame.

    Decided before colour conversion and scaling, so a skipped frame costs only its decode
    (which H.264's reference frames make unavoidable).
    """

    def __init__(self, fps: float | None) -> None:
        self.period_s = 1.0 / fps if fps else 0.0
        self._next_due_s: float | None = None

    def keep(self, t_s: float) -> bool:
        if not self.period_s:
            return True
        # 1 ms of tolerance: timestamps of a 15 fps stream are not exact multiples of 1/15 s.
        if self._next_due_s is not None and t_s < self._next_due_s - 1e-3:
            if self._next_due_s - t_s > 4 * self.period_s:  # time went backwards: a loop or restart
                self._next_due_s = None
            else:
                return False
        # Due times advance on a fixed grid, so 15 -> 5 fps keeps exactly every third frame
        # instead of drifting with jitter in the timestamps; a long gap restarts the grid.
        due = self._next_due_s if self._next_due_s is not None else t_s
        self._next_due_s = max(due + self.period_s, t_s + self.period_s * 0.5)
        return True
