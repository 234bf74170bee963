"""A YOLO detector: letterbox into a preallocated batch, run the backend, decode per image.

The three steps are separate methods so that the daemon can time each stage and run them on
frames that were already scaled by the decoder; `detect` chains them for the CLI and tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import supervision as sv

from edge_agent.inference.letterbox import Letterbox, input_shape, resize_for, write_input
from edge_agent.inference.runner import Runner, RunnerError
from edge_agent.inference.yolo_decode import decode


@dataclass(frozen=True, slots=True)
class DetectorSettings:
    conf_threshold: float = 0.25
    iou_threshold: float = 0.7
    max_det: int = 300
    max_batch: int = 8
    # Rectangular inputs (smallest stride-aligned shape) need a model with dynamic H and W.
    rect: bool = False


def model_input_size(runner: Runner, trained_hw: tuple[int, int] | None) -> tuple[tuple[int, int], bool]:
    """(h, w) to letterbox to, and whether the model accepts other H/W (dynamic axes)."""
    shape = runner.inputs[0].shape
    if len(shape) != 4 or shape[1] not in (3, None):
        raise RunnerError(f"model input {runner.inputs[0].name} has shape {shape}, expected [N, 3, H, W]")
    h, w = shape[2], shape[3]
    if h is not None and w is not None:
        return (h, w), False
    if trained_hw is None:
        raise RunnerError("model has dynamic height/width; its manifest must give input_size")
    return trained_hw, True


def detection_arrays(det: sv.Detections) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """xyxy, confidence and class_id; a Detector always fills all three."""
    if det.confidence is None or det.class_id is None:
        raise ValueError("detections without confidences or class ids")
    return det.xyxy, det.confidence, det.class_id


class BatchBuffers:
    """Preallocated [max_batch, 3, H, W] float32 inputs, one per input shape seen.

    A leading slice of a C-contiguous array is contiguous, so `view(n)` hands the backend a
    batch of n without copying, and the hot path allocates nothing per frame.
    """

    def __init__(self, max_batch: int) -> None:
        self.max_batch = max_batch
        self._by_shape: dict[tuple[int, int], np.ndarray] = {}

    def get(self, hw: tuple[int, int]) -> np.ndarray:
        buf = self._by_shape.get(hw)
        if buf is None:
            buf = np.empty((self.max_batch, 3, *hw), dtype=np.float32)
            self._by_shape[hw] = buf
        return buf


class Detector:
    """Runs one model over batches of frames; not thread-safe (one inference thread owns it; others
    use a `replica`)."""

    def __init__(self, runner: Runner, class_names: Sequence[str], *, input_hw: tuple[int, int],
                 dynamic_hw: bool, settings: DetectorSettings | None = None) -> None:
        self.runner = runner
        self.class_names = np.asarray(class_names)
        self.input_hw = input_hw
        self.settings = settings or DetectorSettings()
        self.dynamic_hw = dynamic_hw
        self.rect = self.settings.rect and dynamic_hw
        self.buffers = BatchBuffers(self.settings.max_batch)

    def replica(self) -> Detector:
        """The same model and settings with its own batch buffers, for another inference thread
        (the runner is shared: ONNX Runtime sessions and the GPU dispatcher take concurrent calls)."""
        return Detector(self.runner, self.class_names.tolist(), input_hw=self.input_hw, dynamic_hw=self.dynamic_hw,
                        settings=self.settings)

    def shape_for(self, src_hws: Sequence[tuple[int, int]]) -> tuple[int, int]:
        """One input shape for a batch: the largest rectangle any of its frames needs."""
        shapes = [input_shape(hw, self.input_hw, rect=self.rect) for hw in src_hws]
        return max(s[0] for s in shapes), max(s[1] for s in shapes)

    def scaled_hw(self, source_hw: tuple[int, int]) -> tuple[int, int]:
        """The size a camera's frames should be decoded to: their place inside the input."""
        lb = Letterbox.fit(source_hw, self.input_hw)
        return lb.new_h, lb.new_w

    @property
    def letterboxes_on_device(self) -> bool:
        """The runner takes uint8 frames and letterboxes them on its GPU (`infer_frames`)."""
        takes = getattr(self.runner, "takes_frames", None)
        return bool(takes) if takes is not None else callable(getattr(self.runner, "infer_frames", None))

    def letterboxes_for(self, source_hws: Sequence[tuple[int, int]]) -> list[Letterbox]:
        """Each frame's geometry inside one batch shape, without touching pixels."""
        hw = self.shape_for(source_hws)
        return [Letterbox.fit(src, hw) for src in source_hws]

    def infer_frames(self, images: Sequence[np.ndarray], letterboxes: Sequence[Letterbox], *,
                     bgr: bool = True) -> np.ndarray:
        """Head output for uint8 frames letterboxed by the runner on its device."""
        infer_frames = getattr(self.runner, "infer_frames", None)
        if not callable(infer_frames):
            raise RunnerError(f"{type(self.runner).__name__} takes no uint8 frames; use preprocess() and infer()")
        return np.asarray(infer_frames(images, letterboxes, bgr=bgr))

    def preprocess(self, images: Sequence[np.ndarray], source_hws: Sequence[tuple[int, int]] | None = None,
                   *, bgr: bool = True) -> tuple[np.ndarray, list[Letterbox]]:
        """Letterbox frames into the batch buffer; returns the batch view and each geometry.

        `images` are full frames, or frames already scaled to `scaled_hw(source_hw)` by the
        decoder, in which case `source_hws` gives each camera's own size and no resize happens.
        """
        sources = source_hws or [img.shape[:2] for img in images]
        hw = self.shape_for(sources)
        batch = self.buffers.get(hw)[: len(images)]
        boxes = []
        for slot, img, src in zip(batch, images, sources, strict=True):
            lb = Letterbox.fit(src, hw)
            write_input(resize_for(img, lb), lb, slot, bgr=bgr)
            boxes.append(lb)
        return batch, boxes

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.runner.infer(batch)

    def postprocess(self, head: np.ndarray, letterboxes: Sequence[Letterbox],
                    classes: Sequence[np.ndarray | None] | None = None) -> list[sv.Detections]:
        """Detections per image in its source pixels; `classes[i]` keeps only those ids for image i."""
        if head.shape[0] != len(letterboxes) or head.shape[1] != 4 + len(self.class_names):
            raise RunnerError(f"model output {head.shape} does not fit {len(letterboxes)} images and "
                              f"{len(self.class_names)} classes")
        s = self.settings
        results = []
        filters = classes or [None] * len(letterboxes)
        for per_image, lb, wanted in zip(head, letterboxes, filters, strict=True):
            raw = decode(per_image, conf_threshold=s.conf_threshold, iou_threshold=s.iou_threshold,
                         max_det=s.max_det, classes=wanted)
            results.append(sv.Detections(
                xyxy=lb.boxes_to_source(raw.xyxy),
                confidence=raw.confidence,
                class_id=raw.class_id,
                data={"class_name": self.class_names[raw.class_id]},
            ))
        return results

    def detect(self, images: Sequence[np.ndarray], *, bgr: bool = True) -> list[sv.Detections]:
        out: list[sv.Detections] = []
        step = self.settings.max_batch
        for start in range(0, len(images), step):
            chunk = images[start : start + step]
            batch, letterboxes = self.preprocess(chunk, bgr=bgr)
            out.extend(self.postprocess(self.infer(batch), letterboxes))
        return out
