"""Detection accuracy of a model on generated synthetic scenes: AP at IoU 0.5 per class, and its mean.

The held-out scenes come from `edge_agent.synthetic.dataset.generate` with the seed the training
tool keeps for the final measurement only, so a number here is comparable with the one in the
manifest. Matching follows the usual VOC/COCO rules: detections of one class in descending
confidence, each takes the best still-unclaimed ground-truth box of its class with IoU >= 0.5,
the rest are false positives. Two ways to integrate the precision/recall curve:

- `all-point` (the default; VOC 2010+): the exact area under the monotone precision envelope.
  It agrees with COCO's 101-recall-point mAP50 (supervision's `MeanAveragePrecision`) to 0.001.
- `ultralytics`: Ultralytics' `compute_ap`, kept to cross-check the manifest's number like for
  like: the envelope is extended by a straight line from the highest recall reached down to
  (recall 1, precision 0), sampled at 101 points and integrated with the trapezoid rule. That line
  credits recall never reached, and a perfect detector scores 0.995.

The detections are the runtime's own (best class per anchor, as `yolo_decode` and Ultralytics'
predict give them). Ultralytics' val decodes multi-label instead (every class above 0.001 on an
anchor becomes a candidate box), which lifts the recall of classes the model confuses (washer vs
nut) and so its mAP50: on the demo model 0.9367 against our 0.9053. With multi-label decoding, its
224x320 rect letterbox and the `ultralytics` integration, this module gives 0.9412 (within 0.005).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import cv2
import numpy as np
import supervision as sv

from edge_agent.inference.detector import Detector, DetectorSettings, detection_arrays
from edge_agent.synthetic.dataset import Sample, generate
from edge_agent.training.train import HELDOUT_SEED  # light module: its heavy imports are lazy

HELDOUT_HW = (360, 640)
# The training tool writes its held-out images as JPEG at this quality before Ultralytics measures them.
TRAINING_JPEG_QUALITY = 92
IOU_THRESHOLD = 0.5
# What an accuracy measurement runs at: Ultralytics' val defaults (a low confidence floor so the
# whole precision/recall curve is seen, its NMS IoU and detection cap).
EVAL_SETTINGS = DetectorSettings(conf_threshold=0.001, iou_threshold=0.7, max_det=300, max_batch=8)

Interpolation = Literal["all-point", "ultralytics"]
_RECALL_POINTS = np.linspace(0.0, 1.0, 101)


@dataclass(frozen=True, slots=True)
class GroundTruth:
    """Labelled boxes of one image in its own pixels."""

    xyxy: np.ndarray  # [K, 4] float32
    class_id: np.ndarray  # [K] int64

    def __post_init__(self) -> None:
        if self.xyxy.ndim != 2 or self.xyxy.shape[1] != 4 or self.class_id.shape != (self.xyxy.shape[0],):
            raise ValueError(f"ground truth needs xyxy [K, 4] and class_id [K], got {self.xyxy.shape} "
                             f"and {self.class_id.shape}")

    @classmethod
    def of(cls, sample: Sample) -> GroundTruth:
        boxes = sample.boxes
        return cls(np.asarray([[b.x1, b.y1, b.x2, b.y2] for b in boxes], np.float32).reshape(-1, 4),
                   np.asarray([b.class_id for b in boxes], np.int64))


@dataclass(frozen=True)
class ApResult:
    """AP at IoU 0.5 per class that has ground truth, and their mean."""

    map50: float
    ap50_per_class: dict[str, float]
    images: int
    instances: int
    interpolation: Interpolation

    def to_dict(self) -> dict[str, Any]:
        return {"mAP50": round(self.map50, 4),
                "AP50_per_class": {k: round(v, 4) for k, v in self.ap50_per_class.items()},
                "images": self.images, "instances": self.instances, "interpolation": self.interpolation}


def match_detections(pred_xyxy: np.ndarray, pred_conf: np.ndarray, pred_cls: np.ndarray,
                     gt: GroundTruth, iou_threshold: float = IOU_THRESHOLD) -> np.ndarray:
    """True-positive flag per prediction: greedy in descending confidence, one ground truth per match."""
    tp = np.zeros(len(pred_conf), dtype=bool)
    if not len(pred_conf) or not len(gt.class_id):
        return tp
    iou = sv.box_iou_batch(pred_xyxy.astype(np.float32), gt.xyxy)  # [P, G]
    iou[pred_cls[:, None] != gt.class_id[None, :]] = 0.0
    claimed = np.zeros(len(gt.class_id), dtype=bool)
    for p in np.argsort(-pred_conf, kind="stable"):
        candidates = np.where(claimed, 0.0, iou[p])
        g = int(np.argmax(candidates))
        if candidates[g] >= iou_threshold:
            tp[p] = True
            claimed[g] = True
    return tp


def average_precision(recall: np.ndarray, precision: np.ndarray, interpolation: Interpolation) -> float:
    """Area under the precision/recall curve of one class (recall ascending, as accumulated)."""
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([1.0], precision, [0.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))  # the monotone envelope
    if interpolation == "ultralytics":
        sampled = np.interp(_RECALL_POINTS, mrec, mpre)
        # The trapezoid rule written out: np.trapezoid needs numpy 2, the project allows 1.26.
        return float(np.sum((sampled[1:] + sampled[:-1]) / 2 * np.diff(_RECALL_POINTS)))
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


@dataclass
class ApAccumulator:
    """Collects per-image matches; `result` computes AP per class over everything added."""

    class_names: Sequence[str]
    iou_threshold: float = IOU_THRESHOLD
    _tp: list[np.ndarray] = field(default_factory=list)
    _conf: list[np.ndarray] = field(default_factory=list)
    _cls: list[np.ndarray] = field(default_factory=list)
    _gt_cls: list[np.ndarray] = field(default_factory=list)

    def add(self, det: sv.Detections, gt: GroundTruth) -> None:
        xyxy, conf, cls = detection_arrays(det)
        self._tp.append(match_detections(xyxy, conf, cls, gt, self.iou_threshold))
        self._conf.append(conf.astype(np.float64))
        self._cls.append(cls.astype(np.int64))
        self._gt_cls.append(gt.class_id)

    def result(self, interpolation: Interpolation = "all-point") -> ApResult:
        def cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
            return np.concatenate(parts) if parts else np.zeros(0, dtype)

        tp, conf = cat(self._tp, bool), cat(self._conf, np.float64)
        cls, gt_cls = cat(self._cls, np.int64), cat(self._gt_cls, np.int64)
        per_class: dict[str, float] = {}
        # Classes without ground truth have no defined AP and are left out of the mean.
        for c in np.unique(gt_cls):
            mine = cls == c
            order = np.argsort(-conf[mine], kind="stable")
            hits = tp[mine][order]
            tpc = np.cumsum(hits)
            fpc = np.cumsum(~hits)
            recall = tpc / int(np.sum(gt_cls == c))
            precision = tpc / np.maximum(tpc + fpc, 1)
            ap = average_precision(recall, precision, interpolation) if hits.size else 0.0
            per_class[str(self.class_names[int(c)])] = ap
        map50 = float(np.mean(list(per_class.values()))) if per_class else 0.0
        return ApResult(map50, per_class, len(self._gt_cls), int(gt_cls.size), interpolation)


def jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return np.asarray(cv2.imdecode(encoded, cv2.IMREAD_COLOR))


def heldout_samples(count: int, *, seed: int = HELDOUT_SEED,
                    jpeg_quality: int | None = TRAINING_JPEG_QUALITY) -> list[Sample]:
    """The held-out scenes at 640x360; by default JPEG-compressed as the training tool stores them."""
    samples = generate(seed, count, width=HELDOUT_HW[1], height=HELDOUT_HW[0])
    if jpeg_quality is None:
        return samples
    return [Sample(jpeg_roundtrip(s.image, jpeg_quality), s.boxes) for s in samples]


def evaluate(detector: Detector, samples: Iterable[Sample], *,
             interpolation: Interpolation = "all-point") -> ApResult:
    """mAP50 of `detector` on `samples`. Use a detector built with EVAL_SETTINGS for numbers that
    compare with Ultralytics' val; a higher confidence threshold cuts the curve short."""
    acc = ApAccumulator([str(n) for n in detector.class_names])
    batch: list[Sample] = []
    for sample in samples:
        batch.append(sample)
        if len(batch) == detector.settings.max_batch:
            _add_batch(acc, detector, batch)
            batch = []
    if batch:
        _add_batch(acc, detector, batch)
    return acc.result(interpolation)


def _add_batch(acc: ApAccumulator, detector: Detector, batch: list[Sample]) -> None:
    for sample, det in zip(batch, detector.detect([s.image for s in batch]), strict=True):
        acc.add(det, GroundTruth.of(sample))
