"""CPU use over a window, from /proc: this process, its child processes, the whole machine.

The cameras (RTSP servers) and the broker are our child processes and run on the same cores as
the pipeline, so a step reports their share next to ours; whatever else the machine did in the
window (another job, a test run) shows up as `other_percent`, which says how far to trust it.
Percentages are of one core, as `top` shows them: 2 busy cores read 200.
"""

from __future__ import annotations

import math
import os
import resource
import threading
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PROC = Path("/proc")


def cores() -> int:
    """Cores this process may run on (its affinity mask, not the machine's total)."""
    return len(os.sched_getaffinity(0))


def _stat_fields(pid: int, stat: Path | None = None) -> list[str] | None:
    """/proc/<pid>/stat after the command name (which may hold spaces); None if it is gone."""
    try:
        text = (stat or _PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _cpu_s(fields: list[str] | None) -> float:
    # Fields 14 and 15 of stat(5) (utime, stime); the list starts at field 3.
    return 0.0 if fields is None else (int(fields[11]) + int(fields[12])) / _CLK_TCK


def child_pids(parent: int | None = None) -> list[int]:
    """Direct children of `parent` (default: this process)."""
    parent = os.getpid() if parent is None else parent
    found = []
    for entry in _PROC.iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and int(fields[1]) == parent:
                found.append(int(entry.name))
    return sorted(found)


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far; 0 when it has exited."""
    return _cpu_s(_stat_fields(pid))


# Python thread names of the daemon -> the group a report shows; threads Python did not start
# (ONNX Runtime's pool, FFmpeg's decoder threads) are "native".
_THREAD_GROUPS = (("camera-", "camera threads"), ("inference", "inference workers"),
                  ("publisher", "publisher thread"), ("paho", "MQTT client"), ("supervisor", "supervisor"),
                  ("MainThread", "bench main thread"))


def thread_group(name: str) -> str:
    return next((group for prefix, group in _THREAD_GROUPS if name.startswith(prefix)), "other Python threads")


def threads_cpu_s() -> dict[str, float]:
    """CPU seconds so far of this process's threads, summed per group (see `thread_group`)."""
    groups = {t.native_id: thread_group(t.name) for t in threading.enumerate() if t.native_id is not None}
    totals: defaultdict[str, float] = defaultdict(float)
    with os.scandir(_PROC / "self" / "task") as tasks:
        for task in tasks:
            tid = int(task.name)
            totals[groups.get(tid, "native (ORT pool, FFmpeg)")] += _cpu_s(
                _stat_fields(tid, Path(task.path) / "stat"))
    return dict(totals)


def threads_percent(start: Mapping[str, float], end: Mapping[str, float], wall_s: float) -> dict[str, float]:
    """Per-group CPU between two `threads_cpu_s` readings, % of one core. A thread that ended in
    between takes its time with it, so groups only ever show what still runs."""
    return {g: round(100 * max(end[g] - start.get(g, 0.0), 0.0) / max(wall_s, 1e-9), 1)
            for g in sorted(end, key=lambda g: -(end[g] - start.get(g, 0.0)))}


def machine_cpu_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores."""
    values = [int(v) for v in (_PROC / "stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    return (total - idle) / _CLK_TCK, total / _CLK_TCK


def _reaped_children_s() -> float:
    """CPU seconds of child processes that exited and were waited for (an Ultralytics run)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True, slots=True)
class CpuSample:
    at_ns: int
    own_s: float
    helpers_s: float  # running children: cameras, broker
    reaped_s: float  # children that exited: a finished Ultralytics run
    machine_busy_s: float
    machine_total_s: float

    @classmethod
    def take(cls, helper_pids: Sequence[int]) -> CpuSample:
        busy, total = machine_cpu_s()
        return cls(time.monotonic_ns(), time.process_time(), sum(process_cpu_s(p) for p in helper_pids),
                   _reaped_children_s(), busy, total)


@dataclass(frozen=True, slots=True)
class CpuUse:
    """CPU over a window, in percent of one core."""

    own_percent: float  # this process (the daemon under test)
    helpers_percent: float  # our child processes: RTSP cameras, Mosquitto (and a finished child run)
    machine_percent: float  # everything on the machine
    other_percent: float  # machine - own - helpers: load we did not cause

    @classmethod
    def between(cls, start: CpuSample, end: CpuSample) -> CpuUse:
        wall_s = max((end.at_ns - start.at_ns) / 1e9, 1e-9)
        own = 100 * (end.own_s - start.own_s) / wall_s
        helpers = 100 * (end.helpers_s - start.helpers_s + end.reaped_s - start.reaped_s) / wall_s
        total_s = max(end.machine_total_s - start.machine_total_s, 1e-9)
        # /proc/stat's total advances by (all the machine's cores) x wall.
        machine = 100 * (os.cpu_count() or 1) * (end.machine_busy_s - start.machine_busy_s) / total_s
        return cls(round(own, 1), round(helpers, 1), round(machine, 1),
                   round(max(machine - own - helpers, 0.0), 1))


# Load from other processes above this (% of one core) makes a measurement noisy: it is repeated.
NOISY_OTHER_PERCENT = 15.0
_QUIET_SAMPLE_S = 2.0


def wait_for_quiet(max_wait_s: float, stop: threading.Event, *,
                   threshold_percent: float = NOISY_OTHER_PERCENT) -> float:
    """Wait (up to `max_wait_s`) until other processes use less than `threshold_percent` of a
    core over a short sample; returns the last sample's other load (NaN when not sampled)."""
    if max_wait_s <= 0:
        return math.nan
    deadline = time.monotonic() + max_wait_s
    while True:
        pids = child_pids()
        start = CpuSample.take(pids)
        if stop.wait(_QUIET_SAMPLE_S):
            return math.nan
        other = CpuUse.between(start, CpuSample.take(pids)).other_percent
        if other < threshold_percent or time.monotonic() >= deadline:
            return other
