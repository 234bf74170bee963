"""Camera-count sweeps and their stop rules, as pure functions of the steps measured so far.

A sweep adds cameras in fixed steps. The saturation rule stops it once processed frames/s no
longer rises: the newest step did not beat the best earlier step by more than `min_gain`. A
fixed relative margin (not "any rise") keeps run-to-run noise of a saturated system (a few
percent) from dragging the sweep on; a system that still keeps up gains a whole camera's worth of
frames per step, far more than the margin.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

MIN_GAIN = 0.03
MAX_ATTEMPTS = 3

Step = TypeVar("Step")


def camera_counts(start: int, step: int, maximum: int) -> list[int]:
    """start, start + step, ... up to `maximum`, which is always included as the last count."""
    if start < 1 or step < 1 or maximum < start:
        raise ValueError(f"need 1 <= start <= maximum and step >= 1, got start={start} step={step} "
                         f"maximum={maximum}")
    counts = list(range(start, maximum + 1, step))
    if counts[-1] != maximum:
        counts.append(maximum)
    return counts


def saturated(fps_history: Sequence[float], min_gain: float = MIN_GAIN) -> bool:
    """True once the newest step's frames/s is not above the best earlier one by more than `min_gain`."""
    if len(fps_history) < 2:
        return False
    return fps_history[-1] <= max(fps_history[:-1]) * (1.0 + min_gain)


def best(fps_history: Sequence[float]) -> int:
    """Index of the step with the most frames/s (the earliest of equals: fewer cameras, same work)."""
    if not fps_history:
        raise ValueError("no steps measured")
    top = max(fps_history)
    return next(i for i, fps in enumerate(fps_history) if fps == top)


def refine_count(fps_by_cameras: dict[int, float]) -> int | None:
    """A count between the best one and a measured neighbour, not measured yet; None when the best
    count's neighbours are one camera away. Fixed steps of 4 cameras can straddle the knee (8 still
    keeping up, 12 already dropping a third); the peak often lies between them."""
    if not fps_by_cameras:
        return None
    counts = sorted(fps_by_cameras)
    top = max(counts, key=lambda n: (fps_by_cameras[n], -n))
    i = counts.index(top)
    neighbours = [counts[j] for j in (i + 1, i - 1) if 0 <= j < len(counts)]
    for other in neighbours:
        if abs(other - top) > 1:
            return (top + other) // 2 if other > top else (top + other + 1) // 2
    return None


def sweep(run: Callable[[int], Step], counts: Sequence[int], done: Callable[[list[Step]], bool]) -> list[Step]:
    """Run `run(n)` for each count in turn until `done(steps so far)` says to stop."""
    steps: list[Step] = []
    for n in counts:
        steps.append(run(n))
        if done(steps):
            break
    return steps


def retry_when_noisy(measure: Callable[[], Step], other_load: Callable[[Step], float], *, limit: float,
                     wait_quiet: Callable[[], object], on_noise: Callable[[Step], object],
                     attempts: int = MAX_ATTEMPTS) -> Step:
    """Measure; while other processes loaded the machine meanwhile (`other_load` >= `limit`), wait
    for quiet and measure again, at most `attempts` times. Keeps the least disturbed result: on a
    shared machine a step is repeated rather than reported with someone else's load in it."""
    results: list[Step] = []
    for attempt in range(attempts):
        if attempt:
            wait_quiet()
        result = measure()
        results.append(result)
        if other_load(result) < limit:
            return result
        on_noise(result)
    return min(results, key=other_load)
