"""The ONNX Runtime runner and the detector on the shipped model."""

import cv2
import numpy as np
import pytest

from edge_agent.inference.detector import DetectorSettings
from edge_agent.inference.loading import open_model
from edge_agent.inference.ort_runner import choose_providers
from edge_agent.inference.runner import RunnerError, load_runner


@pytest.fixture(scope="module")
def calibration_images(demo_manifest, calibration_dir):
    return [cv2.imread(str(calibration_dir / e["file"])) for e in demo_manifest.calibration["images"]]


@pytest.mark.parametrize(
    ("requested", "available", "expected"),
    [
        (None, ["CPUExecutionProvider"], ["CPUExecutionProvider"]),
        (None, ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
         ["CUDAExecutionProvider", "CPUExecutionProvider"]),
        (["CPUExecutionProvider"], ["CUDAExecutionProvider", "CPUExecutionProvider"],
         ["CPUExecutionProvider"]),
    ],
)
def test_choose_providers(requested, available, expected):
    """CUDA is used when the build has it; an explicit choice wins."""
    assert choose_providers(requested, available) == expected


def test_choose_providers_refuses_missing():
    """Asking for a provider this build lacks is an error that lists what it has."""
    with pytest.raises(RunnerError, match="CPUExecutionProvider"):
        choose_providers(["CUDAExecutionProvider"], ["CPUExecutionProvider"])


def test_garbage_model_is_a_clear_error(tmp_path):
    """A file that is not ONNX is rejected with the path in the message."""
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(RunnerError, match=r"bad\.onnx"):
        load_runner(bad)
    with pytest.raises(RunnerError, match="not found"):
        load_runner(tmp_path / "missing.onnx")


def test_runner_describes_dynamic_input(demo_model, demo_manifest):
    """The exported model has a dynamic batch and H/W and one output [N, 4 + C, A]."""
    runner = load_runner(demo_model, threads=1)
    (inp,), (out,) = runner.inputs, runner.outputs
    assert inp.shape[1] == 3
    assert inp.shape[0] is None
    assert inp.is_dynamic
    assert out.shape[1] == 4 + len(demo_manifest.class_names)


@pytest.mark.parametrize(("batch", "hw", "anchors"), [(1, (320, 320), 2100), (3, (320, 320), 2100),
                                                      (2, (192, 320), 1260)])
def test_runner_dynamic_batch_and_shape(demo_model, batch, hw, anchors):
    """Any batch size and stride-aligned H/W run; anchors follow the input area."""
    runner = load_runner(demo_model, threads=1)
    out = runner.infer(np.full((batch, 3, *hw), 0.5, np.float32))
    assert out.shape == (batch, 8, anchors)


def test_batched_equals_single(demo_model, calibration_images):
    """A batch of all calibration images gives each image the same detections as alone."""
    model = open_model(demo_model, warmup=False)
    batched = model.detector.detect(calibration_images)
    for img, det in zip(calibration_images, batched, strict=True):
        (single,) = model.detector.detect([img])
        np.testing.assert_allclose(det.xyxy, single.xyxy, atol=1e-2)
        np.testing.assert_allclose(det.confidence, single.confidence, atol=1e-4)


def test_rect_batch_uses_the_smaller_input(demo_model, calibration_images):
    """With rect on a dynamic model, 16:9 frames run at 192x320 and give the same objects."""
    square = open_model(demo_model, warmup=False)
    rect = open_model(demo_model, settings=DetectorSettings(rect=True), warmup=False)
    assert rect.detector.shape_for([img.shape[:2] for img in calibration_images]) == (192, 320)
    batch, _ = rect.detector.preprocess(calibration_images[:2])
    assert batch.shape == (2, 3, 192, 320)
    for img in calibration_images:
        (a,), (b,) = square.detector.detect([img]), rect.detector.detect([img])
        assert sorted(a.class_id.tolist()) == sorted(b.class_id.tolist())


def test_detections_carry_class_names_in_source_pixels(demo_model, demo_manifest, calibration_images):
    """Detections are supervision.Detections with names, boxes inside the camera's own frame."""
    model = open_model(demo_model, warmup=False)
    (det,) = model.detector.detect(calibration_images[:1])
    assert len(det) > 0
    assert set(det.data["class_name"]) <= set(demo_manifest.class_names)
    h, w = calibration_images[0].shape[:2]
    assert (det.xyxy[:, [0, 2]] <= w).all()
    assert (det.xyxy[:, [1, 3]] <= h).all()
    assert (det.xyxy >= 0).all()
