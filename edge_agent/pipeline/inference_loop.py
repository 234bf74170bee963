"""The inference thread: batches across cameras, runs the model, hands results on.

It owns the model: one thread calls the backend, so the backend needs no locking, and a new model
is picked up between two batches (one read of `self._model` per batch), never inside one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
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
        self._swap_lock = threading.Lock()  # model and class filters change together
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="inference", daemon=True)
        self.heartbeat_ns = time.monotonic_ns()  # last time the loop made progress
        self.batches = 0
        self.frames = 0
        self.errors = 0
        # (model sha256, inference ms per image, ok) of recent batches: what probation judges.
        self.recent: deque[tuple[str, float, bool]] = deque(maxlen=512)

    @property
    def model(self) -> LoadedModel:
        return self._model

    def set_class_filter(self, camera: str, class_ids: np.ndarray | None) -> None:
        with self._swap_lock:
            self._class_filters = {**self._class_filters, camera: class_ids}

    def swap_model(self, model: LoadedModel, *, max_batch: int, max_wait_ms: float,
                   class_filters: Mapping[str, np.ndarray | None] | None = None) -> LoadedModel:
        """Use `model` from the next batch on; returns the previous one. The batch in flight
        holds its own reference, so the old model lives until that batch is done."""
        with self._swap_lock:
            previous, self._model = self._model, model
            if class_filters is not None:
                self._class_filters = dict(class_filters)
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
            with self._swap_lock:  # one consistent (model, filters) per batch
                model, filters = self._model, self._class_filters
            try:
                self._run_batch(frames, model, filters)
            except Exception:  # one bad batch must not end the daemon's only inference thread
                self.errors += 1
                self.recent.append((model.manifest.sha256, 0.0, False))
                log.exception("inference failed for a batch of %d frames; dropped", len(frames),
                              extra={"event": "inference_error"})

    def _run_batch(self, frames: list[Frame], model: LoadedModel,
                   class_filters: Mapping[str, np.ndarray | None]) -> None:
        detector = model.detector
        batch, letterboxes = detector.preprocess([f.image for f in frames], [f.source_hw for f in frames],
                                                 bgr=False)
        stamp = time.monotonic_ns()
        for f in frames:
            f.stamps.preprocessed = stamp
        head = detector.infer(batch)
        inferred = time.monotonic_ns()
        for f in frames:
            f.stamps.inferred = inferred
        filters = [class_filters.get(f.camera) for f in frames]
        detections = detector.postprocess(head, letterboxes, filters)
        stamp = time.monotonic_ns()
        ref = ModelRef(model.manifest.name, model.manifest.version, model.manifest.sha256)
        batch_id = self.batches + 1
        for f, det in zip(frames, detections, strict=True):
            f.stamps.postprocessed = stamp
            self._emit(DetectionResult(f.camera, f.seq, f.captured_at, ref, _objects(det), len(frames),
                                       f.stamps, batch_id))
        self.recent.append((ref.sha256, (inferred - frames[0].stamps.preprocessed) / 1e6 / len(frames), True))
        self.batches = batch_id
        self.frames += len(frames)
        self.heartbeat_ns = stamp
