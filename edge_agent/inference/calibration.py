"""Does a model still give the detections its manifest promises on its calibration images?

Used by the tests against the shipped model, by the reference comparison with Ultralytics, and
before a new model version is swapped in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import supervision as sv

from edge_agent.inference.detector import Detector, detection_arrays

MIN_IOU = 0.99
MAX_CONFIDENCE_DELTA = 1e-3


@dataclass
class CalibrationReport:
    images: int = 0
    expected: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and self.images > 0


def compare(expected: Sequence[dict[str, Any]], got: sv.Detections, *, where: str,
            min_iou: float = MIN_IOU, max_conf_delta: float = MAX_CONFIDENCE_DELTA) -> list[str]:
    """Problems found matching `expected` ({class_id, box, confidence}) one-to-one with `got`.

    Each expected box takes the unused detection of its class that overlaps it most; what is
    left over on either side is a problem too.
    """
    problems = []
    xyxy, confidence, class_id = detection_arrays(got)
    unused = np.ones(len(got), dtype=bool)
    for exp in sorted(expected, key=lambda e: -float(e.get("confidence", 1.0))):
        candidates = np.flatnonzero(unused & (class_id == exp["class_id"]))
        label = exp.get("label", exp["class_id"])
        if not candidates.size:
            problems.append(f"{where}: expected {label} at {exp['box']} not found")
            continue
        ious = sv.box_iou_batch(np.asarray([exp["box"]], np.float32), xyxy[candidates])[0]
        best = int(np.argmax(ious))
        index, iou = int(candidates[best]), float(ious[best])
        unused[index] = False
        if iou < min_iou:
            problems.append(f"{where}: {label} at {exp['box']} matched IoU {iou:.4f} < {min_iou}")
        if "confidence" in exp and abs(float(confidence[index]) - exp["confidence"]) > max_conf_delta:
            problems.append(f"{where}: {label} confidence {float(confidence[index]):.5f}, "
                            f"expected {exp['confidence']:.5f} +- {max_conf_delta}")
    problems.extend(f"{where}: unexpected {class_id[i]} at {xyxy[i].round(1).tolist()}"
                    for i in np.flatnonzero(unused))
    return problems


def check_calibration(detector: Detector, calibration: dict[str, Any], folder: Path) -> CalibrationReport:
    """Run the detector on each calibration image and compare with the recorded detections."""
    report = CalibrationReport()
    for entry in calibration.get("images", []):
        img = cv2.imread(str(folder / entry["file"]), cv2.IMREAD_COLOR)
        if img is None:
            report.problems.append(f"{entry['file']}: cannot read calibration image in {folder}")
            continue
        (det,) = detector.detect([img])
        report.images += 1
        report.expected += len(entry["expected"])
        report.problems.extend(compare(entry["expected"], det, where=entry["file"]))
    return report
