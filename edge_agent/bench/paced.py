"""The paced run's rules: how many cameras at their own frame rate the pipeline sustains.

A camera count is sustained when at most 1% of the offered frames go unprocessed and the p99
capture-to-publish latency is within budget. The budget is `max_wait_ms + 2 x one batch's
inference time`: a frame that arrives just after a batch started waits for that batch, then for
its own batch to fill (at most max_wait_ms), then for its own inference. The batch's inference
time is the infer stage's median in the same run, so the budget follows the batches actually run.

The sweep finds a failing count with coarse steps; `next_count` then bisects between the last
sustained count and the first failing one, so the answer is exact to one camera in a few runs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

MAX_DROP_FRACTION = 0.01


def latency_budget_ms(max_wait_ms: float, batch_infer_ms: float) -> float:
    return max_wait_ms + 2.0 * batch_infer_ms


@dataclass(frozen=True, slots=True)
class PacedCheck:
    cameras: int
    drop_fraction: float  # offered frames not processed, 0..1
    p99_total_ms: float
    budget_ms: float

    @property
    def sustained(self) -> bool:
        return self.drop_fraction <= MAX_DROP_FRACTION and self.p99_total_ms <= self.budget_ms

    @property
    def why_not(self) -> str:
        reasons = []
        if self.drop_fraction > MAX_DROP_FRACTION:
            reasons.append(f"drops {100 * self.drop_fraction:.1f}% > {100 * MAX_DROP_FRACTION:g}%")
        if self.p99_total_ms > self.budget_ms:
            reasons.append(f"p99 {self.p99_total_ms:.1f} ms > budget {self.budget_ms:.1f} ms")
        return "; ".join(reasons)


def _bracket(sustained: Mapping[int, bool]) -> tuple[int, int | None]:
    """(largest sustained count below the first failure, first failure or None)."""
    failures = [n for n, ok in sustained.items() if not ok]
    first_fail = min(failures) if failures else None
    passing = [n for n, ok in sustained.items() if ok and (first_fail is None or n < first_fail)]
    return max(passing, default=0), first_fail


def next_count(sustained: Mapping[int, bool]) -> int | None:
    """The next camera count to try, or None when the limit is known to one camera (or no count
    failed yet, so there is nothing to bisect)."""
    low, high = _bracket(sustained)
    if high is None or high - low <= 1:
        return None
    return (low + high) // 2


def cameras_sustained(sustained: Mapping[int, bool]) -> int:
    """Cameras sustained: the largest passing count below the first failing one (0 if none passed)."""
    return _bracket(sustained)[0]


def limit_found(sustained: Mapping[int, bool]) -> bool:
    """False when every count tried passed: the answer is only a lower bound (raise --max-cameras)."""
    return _bracket(sustained)[1] is not None


def half_load_cameras(saturated_fps: float, camera_fps: float) -> int:
    """Cameras that offer half of the saturated throughput (at least one)."""
    if camera_fps <= 0:
        raise ValueError(f"camera_fps must be > 0, got {camera_fps}")
    return max(1, math.floor(saturated_fps / 2 / camera_fps + 0.5))
