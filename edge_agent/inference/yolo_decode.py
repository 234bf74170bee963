"""Decode the YOLOv8/YOLO11 detection head and run class-aware NMS in numpy.

The head output is [4 + C, A] per image: box centre/size in input pixels, then one score per
class, for A anchors. Semantics follow Ultralytics' `non_max_suppression` (best class per
anchor, strict `>` on the confidence threshold, class offsets so that NMS never suppresses across
classes, at most `max_det` kept), so that results match theirs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Boxes of different classes are moved this far apart so one NMS pass stays class-aware.
_CLASS_OFFSET = 7680.0
MAX_NMS_CANDIDATES = 30000


@dataclass(frozen=True, slots=True)
class RawDetections:
    """Detections of one image in model-input pixels."""

    xyxy: np.ndarray  # [K, 4] float32
    confidence: np.ndarray  # [K] float32
    class_id: np.ndarray  # [K] int64


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS; indices of kept boxes, highest score first. Suppresses IoU > threshold.

    The loop runs once per *kept* box and each step is vectorised over the remaining ones;
    after the confidence filter a frame has tens of candidates, so the work stays far below a
    full K x K IoU matrix.
    """
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        iw = np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest])
        ih = np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest])
        inter = np.maximum(iw, 0) * np.maximum(ih, 0)
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def decode(
    head: np.ndarray,
    *,
    conf_threshold: float,
    iou_threshold: float,
    max_det: int = 300,
    classes: np.ndarray | None = None,
) -> RawDetections:
    """Decode one image's head output [4 + C, A]. `classes` keeps only those class ids."""
    scores = head[4:]
    best = scores.max(axis=0)
    candidates = np.flatnonzero(best > conf_threshold)
    if candidates.size:
        class_id = scores[:, candidates].argmax(axis=0)
        confidence = best[candidates]
        if classes is not None:
            wanted = np.isin(class_id, classes)
            candidates, class_id, confidence = candidates[wanted], class_id[wanted], confidence[wanted]
    if not candidates.size:
        return RawDetections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
    if candidates.size > MAX_NMS_CANDIDATES:
        top = np.argsort(-confidence, kind="stable")[:MAX_NMS_CANDIDATES]
        candidates, class_id, confidence = candidates[top], class_id[top], confidence[top]
    cx, cy, w, h = head[0, candidates], head[1, candidates], head[2, candidates], head[3, candidates]
    xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1).astype(np.float32)
    shifted = xyxy + (class_id.astype(np.float32) * _CLASS_OFFSET)[:, None]
    keep = nms(shifted, confidence, iou_threshold)[:max_det]
    return RawDetections(xyxy[keep], confidence[keep].astype(np.float32), class_id[keep].astype(np.int64))
