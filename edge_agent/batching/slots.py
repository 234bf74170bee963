"""Latest-frame slots, one per camera, and the cross-camera batch collection over them.

Each camera thread puts its newest frame into its slot; a frame still waiting there is replaced
and counted as dropped, so a camera that outruns inference costs memory for one frame, never a
queue. Inference workers take batches: at most one frame per camera per batch (the newest),
cameras served round-robin so that under overload every camera keeps its share, and a batch
closes at `max_batch` frames, or `max_wait_ms` after its first frame, or as soon as every live
camera has contributed. A camera is live from its first frame until its source reports it
disconnected or stalled, so a dead camera is not waited for at all, and a slow one delays a batch
by at most `max_wait_ms`.

Several inference workers take batches from the same slots. A camera whose frame is in a batch
being processed is *in flight* until that batch is `release`d (after its results were handed to
the publisher), and no other batch takes that camera's next frame meanwhile: each camera's
results leave in capture order whichever worker is faster, and a camera has at most one frame in
flight plus one waiting. With `share=k` workers a batch takes at most ceil(ready cameras / k)
frames, so that k idle workers split the cameras between them instead of one taking them all and
the others waiting for its release.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from edge_agent.frame import Frame


class FrameSlots:
    def __init__(self, clock_ns: Callable[[], int] = time.monotonic_ns) -> None:
        self._cond = threading.Condition()
        self._slots: dict[str, Frame | None] = {}
        self._order: list[str] = []
        self._live: set[str] = set()
        self._in_flight: set[str] = set()
        self._batches_in_flight = 0
        self._next = 0  # round-robin start for the next batch
        self._dropped: dict[str, int] = {}
        self._clock_ns = clock_ns

    def add_camera(self, camera: str) -> None:
        with self._cond:
            if camera not in self._slots:
                self._slots[camera] = None
                self._order.append(camera)
                self._dropped.setdefault(camera, 0)

    def remove_camera(self, camera: str) -> Frame | None:
        """Forget a camera; returns the frame still waiting in its slot, if any."""
        with self._cond:
            frame = self._slots.pop(camera, None)
            self._live.discard(camera)
            self._in_flight.discard(camera)
            if camera in self._order:
                self._order.remove(camera)
            return frame

    def put(self, frame: Frame) -> bool:
        """Offer the newest frame of a camera; True when it replaced one (a drop)."""
        with self._cond:
            if frame.camera not in self._slots:
                return False  # camera was removed while its thread was finishing a frame
            replaced = self._slots[frame.camera] is not None
            if replaced:
                self._dropped[frame.camera] += 1
            self._slots[frame.camera] = frame
            self._live.add(frame.camera)
            self._cond.notify_all()  # several workers may wait: the one that can use it must wake
            return replaced

    def set_not_live(self, camera: str) -> None:
        """The camera's source lost its stream: batches stop waiting for it until its next frame."""
        with self._cond:
            self._live.discard(camera)
            self._cond.notify_all()

    def release(self, frames: list[Frame]) -> None:
        """The batch holding `frames` is done: their cameras may be taken again."""
        with self._cond:
            for frame in frames:
                self._in_flight.discard(frame.camera)
            if frames:
                self._batches_in_flight = max(0, self._batches_in_flight - 1)
            self._cond.notify_all()

    def in_flight(self) -> set[str]:
        with self._cond:
            return set(self._in_flight)

    def dropped(self) -> dict[str, int]:
        with self._cond:
            return dict(self._dropped)

    def _collect(self, batch: list[Frame], max_batch: int) -> None:
        n = len(self._order)
        start = self._next
        taken = {f.camera for f in batch}
        for k in range(n):
            if len(batch) >= max_batch:
                break
            camera = self._order[(start + k) % n]
            frame = self._slots[camera]
            if frame is not None and camera not in taken and camera not in self._in_flight:
                self._slots[camera] = None
                batch.append(frame)
                self._next = (start + k + 1) % n

    def _cap(self, max_batch: int, share: int) -> int:
        """Frames for this batch: the ready cameras split over the workers not busy with a batch."""
        ready = len((self._live | {c for c, f in self._slots.items() if f is not None}) - self._in_flight)
        idle = max(1, share - self._batches_in_flight)
        return max(1, min(max_batch, math.ceil(ready / idle)))

    def take_batch(self, max_batch: int, max_wait_ms: float, stop: threading.Event,
                   idle_poll_s: float = 0.1, *, share: int = 1) -> list[Frame]:
        """Block until a batch is ready; returns [] when `stop` is set or after `idle_poll_s`
        without any frame, so that an idle worker still shows it is alive (the watchdog).

        The batch's cameras are in flight until `release(batch)`; `share` is the number of
        workers taking batches from these slots.
        """
        batch: list[Frame] = []
        idle_until = self._clock_ns() + int(idle_poll_s * 1e9)
        with self._cond:
            while not batch:
                if stop.is_set():
                    return batch
                cap = self._cap(max_batch, share)
                self._collect(batch, cap)
                if batch:
                    break
                remaining_s = (idle_until - self._clock_ns()) / 1e9
                if remaining_s <= 0:
                    return batch
                self._cond.wait(remaining_s)
            self._in_flight.update(f.camera for f in batch)
            self._batches_in_flight += 1
            deadline = self._clock_ns() + int(max_wait_ms * 1e6)
            while not stop.is_set():
                # Cameras another worker holds cannot contribute: do not wait for them. (This
                # batch's own cameras are in flight too, so they are counted by len(batch).)
                can_contribute = len(self._live - self._in_flight) + len(batch)
                if len(batch) >= min(cap, can_contribute):
                    break
                remaining_s = (deadline - self._clock_ns()) / 1e9
                if remaining_s <= 0:
                    break
                self._cond.wait(remaining_s)
                before = len(batch)
                self._collect(batch, cap)
                self._in_flight.update(f.camera for f in batch[before:])
        stamp = time.monotonic_ns()
        for frame in batch:
            frame.stamps.batched = stamp
        return batch
