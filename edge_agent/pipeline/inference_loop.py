"""The inference workers: batch across cameras, run the model, hand results on in camera order.

`workers` threads take batches from the same slots. On a CPU each runs its own batch on one core
through a shared ONNX Runtime session with one intra-op thread: ORT runs concurrent `run` calls
in parallel on the callers' threads and releases the GIL while it does, and single-threaded runs
do not spin, so two workers on two cores cost less CPU per image than one session with two
spinning threads (measured in docs/performance.md). On GPUs the runner is a dispatcher and each
worker's batch goes to the GPU with the least work in flight, while other workers letterbox.

Each worker has its own detector (its own preallocated batch buffers) over the shared runner. A
new model is picked up between two batches (one read of `self._model` per batch), never inside
one. A camera has at most one frame in a batch at a time (see `FrameSlots`), so its results
reach the publisher's FIFO queue in capture order whichever worker finishes first.
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping

import numpy as np
import supervision as sv

from edge_agent.batching.slots import FrameSlots
from edge_agent.frame import Frame
from edge_agent.inference.detector import Detector, detection_arrays
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


class _Worker:
    """One inference thread and the detector it owns for the model it last served."""

    def __init__(self, index: int, run: Callable[[_Worker], None]) -> None:
        self.index = index
        self.thread = threading.Thread(target=run, args=(self,), name=f"inference-{index}", daemon=True)
        self.heartbeat_ns = time.monotonic_ns()  # last time this worker made progress
        self.model: LoadedModel | None = None
        self.detector: Detector | None = None

    def detector_for(self, model: LoadedModel) -> Detector:
        if model is not self.model or self.detector is None:
            # Worker 0 uses the model's own detector; the others get their own batch buffers.
            self.model, self.detector = model, model.detector if self.index == 0 else model.detector.replica()
        return self.detector


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
        workers: int = 1,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self._slots = slots
        self._model = model
        self._emit = emit
        self.max_batch = max_batch
        self.max_wait_ms = max_wait_ms
        self._class_filters = dict(class_filters or {})
        self._swap_lock = threading.Lock()  # model and class filters change together
        self._count_lock = threading.Lock()
        self._batch_ids = itertools.count(1)
        self._stop = threading.Event()
        self._workers = [_Worker(i, self._run) for i in range(workers)]
        self.batches = 0
        self.frames = 0
        self.errors = 0
        # (model sha256, inference ms per image, ok) of recent batches: what probation judges.
        self.recent: deque[tuple[str, float, bool]] = deque(maxlen=512)

    @property
    def model(self) -> LoadedModel:
        return self._model

    @property
    def workers(self) -> int:
        return len(self._workers)

    @property
    def heartbeat_ns(self) -> int:
        """The oldest worker's last progress: one hung worker makes the hot path unhealthy."""
        return min(w.heartbeat_ns for w in self._workers)

    def set_class_filter(self, camera: str, class_ids: np.ndarray | None) -> None:
        with self._swap_lock:
            self._class_filters = {**self._class_filters, camera: class_ids}

    def swap_model(self, model: LoadedModel, *, max_batch: int, max_wait_ms: float,
                   class_filters: Mapping[str, np.ndarray | None] | None = None) -> LoadedModel:
        """Use `model` from the next batch on; returns the previous one. Batches in flight
        hold their own reference, so the old model lives until they are done."""
        with self._swap_lock:
            previous, self._model = self._model, model
            if class_filters is not None:
                self._class_filters = dict(class_filters)
            self.max_batch, self.max_wait_ms = max_batch, max_wait_ms
        return previous

    def start(self) -> None:
        for worker in self._workers:
            worker.thread.start()

    def stop(self, timeout_s: float = 5.0) -> bool:
        """Stop taking batches; batches in flight finish and are emitted. True if all joined."""
        self._stop.set()
        deadline = time.monotonic() + timeout_s
        for worker in self._workers:
            worker.thread.join(max(0.0, deadline - time.monotonic()))
        return not any(w.thread.is_alive() for w in self._workers)

    def _run(self, worker: _Worker) -> None:
        while not self._stop.is_set():
            frames = self._slots.take_batch(self.max_batch, self.max_wait_ms, self._stop, share=len(self._workers))
            worker.heartbeat_ns = time.monotonic_ns()
            if not frames:
                continue
            with self._swap_lock:  # one consistent (model, filters) per batch
                model, filters = self._model, self._class_filters
            try:
                self._run_batch(frames, model, worker.detector_for(model), filters)
            except Exception:  # one bad batch must not end an inference thread
                with self._count_lock:
                    self.errors += 1
                self.recent.append((model.manifest.sha256, 0.0, False))
                log.exception("inference failed for a batch of %d frames; dropped", len(frames),
                              extra={"event": "inference_error"})
            finally:
                self._slots.release(frames)
            worker.heartbeat_ns = time.monotonic_ns()

    def _run_batch(self, frames: list[Frame], model: LoadedModel, detector: Detector,
                   class_filters: Mapping[str, np.ndarray | None]) -> None:
        images, source_hws = [f.pixels() for f in frames], [f.source_hw for f in frames]
        if detector.letterboxes_on_device:
            # GPU runners upload uint8 and letterbox there: "infer" then includes the letterbox.
            letterboxes = detector.letterboxes_for(source_hws)
            run = functools.partial(detector.infer_frames, images, letterboxes, bgr=False)
        else:
            batch, letterboxes = detector.preprocess(images, source_hws, bgr=False)
            run = functools.partial(detector.infer, batch)
        stamp = time.monotonic_ns()
        for f in frames:
            f.stamps.preprocessed = stamp
        head = run()
        inferred = time.monotonic_ns()
        for f in frames:
            f.stamps.inferred = inferred
        filters = [class_filters.get(f.camera) for f in frames]
        detections = detector.postprocess(head, letterboxes, filters)
        stamp = time.monotonic_ns()
        ref = ModelRef(model.manifest.name, model.manifest.version, model.manifest.sha256)
        batch_id = next(self._batch_ids)
        for f, det in zip(frames, detections, strict=True):
            f.stamps.postprocessed = stamp
            self._emit(DetectionResult(f.camera, f.seq, f.captured_at, ref, _objects(det), len(frames),
                                       f.stamps, batch_id))
        self.recent.append((ref.sha256, (inferred - frames[0].stamps.preprocessed) / 1e6 / len(frames), True))
        with self._count_lock:
            self.batches += 1
            self.frames += len(frames)
