"""The unit of work on the hot path: one decoded camera frame and the clock it carries.

Every stage stamps `time.monotonic_ns()` when it finishes with the frame, so per-stage timings
are differences of stamps taken on one clock, never wall-clock arithmetic. One wall-clock anchor
per frame (`captured_at`) says when it was captured for subscribers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np


@dataclass(slots=True)
class Stamps:
    """Monotonic nanoseconds at the end of each stage; 0 until the stage has run."""

    captured: int  # packet received from the camera (or read from the file)
    decoded: int = 0  # decoded and scaled to the model's letterbox size
    batched: int = 0  # taken from the camera's slot into a batch
    preprocessed: int = 0  # written into the batch tensor
    inferred: int = 0  # backend returned
    postprocessed: int = 0  # decoded head + NMS + boxes mapped back
    published: int = 0  # handed to the MQTT client

    def timings_ms(self) -> dict[str, float]:
        """Per-stage durations in milliseconds, as published with every result."""
        def ms(a: int, b: int) -> float:
            return round((b - a) / 1e6, 3) if a and b else 0.0

        return {
            "decode": ms(self.captured, self.decoded),
            "queue": ms(self.decoded, self.batched),
            "preprocess": ms(self.batched, self.preprocessed),
            "infer": ms(self.preprocessed, self.inferred),
            "postprocess": ms(self.inferred, self.postprocessed),
            "publish": ms(self.postprocessed, self.published),
            "total": ms(self.captured, self.published),
        }


@dataclass(slots=True)
class Frame:
    """A frame scaled for the model, with what is needed to map results back to the camera."""

    camera: str
    seq: int  # per-camera sequence number of frames handed to the pipeline, from 1
    image: np.ndarray  # H x W x 3 uint8, RGB, already at the letterbox's scaled size
    source_hw: tuple[int, int]  # the camera's own resolution
    captured_at: float  # wall-clock seconds since the epoch
    stamps: Stamps = field(default_factory=lambda: Stamps(captured=time.monotonic_ns()))


class WallClock:
    """Maps monotonic stamps to wall-clock time with one anchor taken at start-up.

    Wall time can jump (NTP, an operator fixing the clock); durations never use it, and
    `captured_at` stays consistent with the stage timings.
    """

    def __init__(self) -> None:
        self._wall_ns = time.time_ns()
        self._mono_ns = time.monotonic_ns()

    def at(self, mono_ns: int) -> float:
        return (self._wall_ns + (mono_ns - self._mono_ns)) / 1e9
