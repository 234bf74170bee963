"""The inference thread: batches across cameras, runs the model, hands results on.

It owns the model: one thread calls the backend, so the backend needs no locking, and a new model
is picked up between two batches (one read of `self._model` per batch), never inside one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

import numpy as np
import supervision as sv

from edge_agent.batching.slots import FrameSlots
from edge_agent.frame import Frame
from edge_agent.inference.detector import detection_arrays
from edge_agent.inference.loading import LoadedModel
from edge_agent.messages import DetectedObject, DetectionResult, ModelRef

log = logging.getLogger(__name__)


def _objects(det: sv.Detections) -> list[DetectedObject]:
    xyxy, confidence, class_id = detection_arrays(det)
    names = det.data["class_name"]
    return [
        DetectedObject(str(names[i]), int(class_id[i]), float(confidence[i]),
                       (float(xyxy[i, 0]), float(xyxy[i, 1]), float(xyxy[i, 2]), float(xyxy[i, 3])))
        for i in range(len(det))
    ]


class InferenceLoop:
    def __init__(
        self,
        slots: FrameSlots,
        model: LoadedModel,
        emit: Callable[[DetectionResult], None],
        *,
        max_batch: int,
        max_wait_ms: float,
        class_filters: Mapping[str, np.ndarray | None] | None = None,
    ) -> None:
        self._slots = slots
        self._model = model
        self._emit = emit
        self.max_batch = max_batch
        self.max_wait_ms = max_wait_ms
        self._class_filters = dict(class_filters or {})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="inference", daemon=True)
        self.heartbeat_ns = time.monotonic_ns()  # last time the loop made progress
        self.batches = 0
        self.frames = 0
        self.errors = 0

    @property
    def model(self) -> LoadedModel:
        return self._model

    def set_class_filter(self, camera: str, class_ids: np.ndarray | None) -> None:
        self._class_filters[camera] = class_ids

    def swap_model(self, model: LoadedModel, *, max_batch: int, max_wait_ms: float) -> LoadedModel:
        """Use `model` from the next batch on; returns the previous one. The batch in flight
        holds its own reference, so the old model lives until that batch is done."""
        previous, self._model = self._model, model
        self.max_batch, self.max_wait_ms = max_batch, max_wait_ms
        return previous

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> bool:
        """Stop taking batches; the batch in flight finishes and is emitted. True if joined."""
        self._stop.set()
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            frames = self._slots.take_batch(self.max_batch, self.max_wait_ms, self._stop)
            self.heartbeat_ns = time.monotonic_ns()
            if not frames:
                continue
            try:
                self._run_batch(frames)
            except Exception:  # one bad batch must not end the daemon's only inference thread
                self.errors += 1
                log.exception("inference failed for a batch of %d frames; dropped", len(frames))

    def _run_batch(self, frames: list[Frame]) -> None:
        model = self._model
        detector = model.detector
        batch, letterboxes = detector.preprocess([f.image for f in frames], [f.source_hw for f in frames],
                                                 bgr=False)
        stamp = time.monotonic_ns()
        for f in frames:
            f.stamps.preprocessed = stamp
        head = detector.infer(batch)
        stamp = time.monotonic_ns()
        for f in frames:
            f.stamps.inferred = stamp
        filters = [self._class_filters.get(f.camera) for f in frames]
        detections = detector.postprocess(head, letterboxes, filters)
        stamp = time.monotonic_ns()
        ref = ModelRef(model.manifest.name, model.manifest.version, model.manifest.sha256)
        for f, det in zip(frames, detections, strict=True):
            f.stamps.postprocessed = stamp
            self._emit(DetectionResult(f.camera, f.seq, f.captured_at, ref, _objects(det), len(frames),
                                       f.stamps))
        self.batches += 1
        self.frames += len(frames)
        self.heartbeat_ns = stamp
