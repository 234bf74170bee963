"""Our torch-free pipeline against Ultralytics' own predict on the same ONNX file.

Runs where the `train` extra is installed (CI installs it); the runtime never imports these.
"""

import os

import cv2
import pytest

from edge_agent.inference.calibration import compare
from edge_agent.inference.detector import DetectorSettings
from edge_agent.inference.loading import open_model

pytestmark = pytest.mark.reference


@pytest.fixture(scope="module")
def ultralytics_yolo(tmp_path_factory, demo_model):
    """Ultralytics' YOLO on the demo ONNX file, kept offline (no downloads, no analytics)."""
    os.environ.update({"YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "0",
                       "YOLO_CONFIG_DIR": str(tmp_path_factory.mktemp("yolo-config"))})
    pytest.importorskip("torch")
    from edge_agent.training import torchvision_fallback

    torchvision_fallback.install()
    ultralytics = pytest.importorskip("ultralytics")
    ultralytics.settings.update({"sync": False})
    return ultralytics.YOLO(str(demo_model), task="detect")


def _reference_expected(result) -> list[dict]:
    boxes = result.boxes
    return [{"class_id": int(c), "confidence": float(p), "box": [float(v) for v in xyxy]}
            for c, p, xyxy in zip(boxes.cls, boxes.conf, boxes.xyxy, strict=True)]


@pytest.mark.parametrize("rect", [False, True], ids=["square-320", "rect-320x192"])
def test_matches_ultralytics_predict(ultralytics_yolo, demo_model, demo_manifest, calibration_dir, rect):
    """Same classes, matched boxes IoU >= 0.99, confidences within 1e-3, on every calibration image."""
    settings = DetectorSettings(conf_threshold=0.25, iou_threshold=0.7, rect=rect)
    ours = open_model(demo_model, settings=settings, warmup=False)
    compared = 0
    for entry in demo_manifest.calibration["images"]:
        img = cv2.imread(str(calibration_dir / entry["file"]))
        reference = ultralytics_yolo.predict(img, imgsz=320, conf=0.25, iou=0.7, rect=rect, verbose=False)[0]
        assert reference.orig_shape == img.shape[:2]
        (det,) = ours.detector.detect([img])
        expected = _reference_expected(reference)
        assert compare(expected, det, where=entry["file"]) == []
        assert sorted(det.class_id.tolist()) == sorted(int(c) for c in reference.boxes.cls)
        compared += len(expected)
    assert compared >= 4

