"""The unit of work on the hot path: one decoded camera frame and the clock it carries.

Every stage stamps `time.monotonic_ns()` when it finishes with the frame, so per-stage timings
are differences of stamps taken on one clock, never wall-clock arithmetic. One wall-clock anchor
per frame (`captured_at`) says when it was captured for subscribers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass(slots=True)
class Stamps:
    """Monotonic nanoseconds at the end of each stage; 0 until the stage has run."""

    captured: int  # packet received from the camera (or read from the file)
    decoded: int = 0  # decoded (scaled to the letterbox size later, in preprocess, if it is inferred)
    batched: int = 0  # taken from the camera's slot into a batch
    preprocessed: int = 0  # scaled (when it was not yet) and written into the batch tensor
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
    """A frame for the model, with what is needed to map results back to the camera.

    Cameras hand over decoded frames with `convert`, which scales them to the letterbox size:
    a frame replaced in its slot before a batch takes it is never scaled at all (under overload
    that is most of them), and `pixels()` scales the rest once, on the inference worker.
    """

    camera: str
    seq: int  # per-camera sequence number of frames handed to the pipeline, from 1
    image: np.ndarray | None  # H x W x 3 uint8, RGB, at the letterbox's scaled size; None until converted
    source_hw: tuple[int, int]  # the camera's own resolution
    captured_at: float  # wall-clock seconds since the epoch
    stamps: Stamps = field(default_factory=lambda: Stamps(captured=time.monotonic_ns()))
    convert: Callable[[], np.ndarray] | None = None

    def pixels(self) -> np.ndarray:
        if self.image is None:
            if self.convert is None:
                raise ValueError(f"frame {self.camera}#{self.seq} has neither pixels nor a converter")
            self.image, self.convert = self.convert(), None  # frees the decoded frame
        return self.image


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
