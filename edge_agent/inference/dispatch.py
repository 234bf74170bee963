"""Several GPUs: one runner per GPU, each batch to the runner with the least work in flight.

`Dispatcher` is itself a Runner, so the detector and the inference loop do not know how many
GPUs there are. Parallelism comes from the callers: with k inference threads calling `infer`,
up to k batches run at once, each on the GPU that has the least work queued at that moment
(ties go round-robin, so an idle box spreads its first batches instead of always using GPU 0).
A runner runs one batch at a time (one TensorRT context, one stream); a thread that picks a busy
runner because every runner is busy waits for that one, which is the least loaded.

Least-in-flight rather than round-robin: GPUs of one box are not always equal (a different
model, thermal throttling, another process's load), and a slow GPU then simply receives fewer
batches. Every runner names the sha256 of the model it serves, and all must serve the same one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_agent.inference.letterbox import Letterbox
from edge_agent.inference.runner import Runner, RunnerError, TensorSpec


@dataclass
class RunnerSlot:
    """One runner with its bookkeeping (guarded by the dispatcher's lock, except `busy`)."""

    name: str  # e.g. "cuda:0"
    runner: Runner
    model_sha256: str
    busy: threading.Lock = field(default_factory=threading.Lock)  # one batch at a time on a runner
    in_flight: int = 0
    dispatched: int = 0
    batches: int = 0
    frames: int = 0
    errors: int = 0
    busy_ns: int = 0


@dataclass
class _Mark:
    """Counters at the previous snapshot, for per-interval rates."""

    batches: int = 0
    frames: int = 0
    busy_ns: int = 0


def least_in_flight(in_flight: Sequence[int], start: int) -> int:
    """Index with the least work in flight; ties resolved by scanning from `start` (round-robin)."""
    if not in_flight:
        raise ValueError("no runners to choose from")
    n = len(in_flight)
    return min(((start + k) % n for k in range(n)), key=lambda i: in_flight[i])


class Dispatcher:
    """Spreads batches over several runners that serve the same model."""

    def __init__(self, slots: Sequence[RunnerSlot], *, clock: Callable[[], int] = time.monotonic_ns) -> None:
        if not slots:
            raise RunnerError("a dispatcher needs at least one runner")
        served = {s.model_sha256 for s in slots}
        if len(served) != 1:
            detail = ", ".join(f"{s.name} serves {s.model_sha256[:12]}" for s in slots)
            raise RunnerError(f"runners serve different models: {detail}")
        first = slots[0].runner
        for s in slots[1:]:
            if s.runner.inputs != first.inputs or s.runner.outputs != first.outputs:
                raise RunnerError(f"{s.name} has inputs/outputs {s.runner.inputs}/{s.runner.outputs}, "
                                  f"{slots[0].name} has {first.inputs}/{first.outputs}")
        self.slots = list(slots)
        self.model_sha256 = slots[0].model_sha256
        self._lock = threading.Lock()
        self._next = 0
        self._clock = clock
        self._marks = [_Mark() for _ in slots]
        self._mark_ns = clock()

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self.slots[0].runner.inputs

    @property
    def takes_frames(self) -> bool:
        """Every runner letterboxes uint8 frames on its GPU (TensorRT runners do; ORT sessions do not)."""
        return all(callable(getattr(s.runner, "infer_frames", None)) for s in self.slots)

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self.slots[0].runner.outputs

    def acquire(self) -> RunnerSlot:
        """Choose the runner for the next batch and count the batch as in flight there."""
        with self._lock:
            index = least_in_flight([s.in_flight for s in self.slots], self._next)
            self._next = (index + 1) % len(self.slots)
            slot = self.slots[index]
            slot.in_flight += 1
            slot.dispatched += 1
            return slot

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self._dispatch(int(batch.shape[0]), lambda runner: runner.infer(batch))

    def infer_frames(self, images: Sequence[np.ndarray], letterboxes: Sequence[Letterbox], *,
                     bgr: bool = True) -> np.ndarray:
        """uint8 frames letterboxed on the chosen GPU (runners that preprocess on the device)."""
        def call(runner: Runner) -> np.ndarray:
            infer_frames = getattr(runner, "infer_frames", None)
            if infer_frames is None:
                raise RunnerError(f"{type(runner).__name__} takes no uint8 frames; use infer()")
            return np.asarray(infer_frames(images, letterboxes, bgr=bgr))

        return self._dispatch(len(images), call)

    def _dispatch(self, frames: int, call: Callable[[Runner], np.ndarray]) -> np.ndarray:
        slot = self.acquire()
        try:
            with slot.busy:
                started = self._clock()
                out = call(slot.runner)
                busy_ns = self._clock() - started
        except BaseException:
            with self._lock:
                slot.in_flight -= 1
                slot.errors += 1
            raise
        with self._lock:
            slot.in_flight -= 1
            slot.batches += 1
            slot.frames += frames
            slot.busy_ns += busy_ns
        return out

    def warmup(self, batch_size: int, height: int, width: int) -> None:
        for slot in self.slots:
            with slot.busy:
                slot.runner.warmup(batch_size, height, width)

    def snapshot(self) -> list[dict[str, Any]]:
        """Per runner, since the previous snapshot: throughput, batches, busy share; and its model."""
        now = self._clock()
        elapsed_s = max((now - self._mark_ns) / 1e9, 1e-9)
        out = []
        with self._lock:
            for slot, mark in zip(self.slots, self._marks, strict=True):
                frames, batches = slot.frames - mark.frames, slot.batches - mark.batches
                busy = slot.busy_ns - mark.busy_ns
                out.append({
                    "runner": slot.name, "model_sha256": slot.model_sha256,
                    "fps": round(frames / elapsed_s, 2), "batches": batches, "frames": frames,
                    "busy_percent": round(100.0 * busy / 1e9 / elapsed_s, 1),
                    "in_flight": slot.in_flight, "errors": slot.errors,
                })
                mark.batches, mark.frames, mark.busy_ns = slot.batches, slot.frames, slot.busy_ns
            self._mark_ns = now
        return out

    def close(self) -> None:
        for slot in self.slots:
            with slot.busy:
                slot.runner.close()


def open_per_device(devices: Sequence[int], open_one: Callable[[int], Runner],
                    sha256_of: Callable[[Runner], str]) -> Dispatcher:
    """One runner per device behind a Dispatcher (one GPU too: the stats then look the same on a
    one-GPU box, and the cost is a lock per batch).

    If one device fails to open, the runners already opened are closed before the error propagates.
    """
    if not devices:
        raise RunnerError("no GPUs configured")
    if len(set(devices)) != len(devices):
        raise RunnerError(f"GPU list has duplicates: {list(devices)}")
    opened: list[RunnerSlot] = []
    try:
        for device in devices:
            runner = open_one(device)
            opened.append(RunnerSlot(f"cuda:{device}", runner, sha256_of(runner)))
        return Dispatcher(opened)
    except BaseException:
        for slot in opened:
            slot.runner.close()
        raise
