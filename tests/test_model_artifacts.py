"""The shipped demo model: its manifest, its accuracy record, and its calibration detections."""

import shutil

import numpy as np
import pytest
import supervision as sv

from edge_agent.inference.calibration import check_calibration, compare
from edge_agent.inference.detector import DetectorSettings
from edge_agent.inference.loading import open_model
from edge_agent.manifest import Manifest, ManifestError, manifest_path_for, sha256_file

MIN_HELDOUT_MAP50 = 0.90


def test_manifest_names_the_shipped_file(demo_model, demo_manifest):
    """The manifest's sha256 and size are those of the ONNX file beside it."""
    assert demo_manifest.sha256 == sha256_file(demo_model)
    assert demo_manifest.size_bytes == demo_model.stat().st_size
    demo_manifest.verify_file(demo_model)


def test_manifest_records_heldout_accuracy(demo_manifest):
    """Held-out mAP50 is recorded, on a seed never used in training, and meets the bar."""
    metrics, seeds = demo_manifest.metrics, demo_manifest.training["seeds"]
    assert metrics["seed"] == seeds["heldout"]
    assert seeds["heldout"] not in (seeds["train"], seeds["val"])
    assert metrics["mAP50"] >= MIN_HELDOUT_MAP50
    assert set(metrics["AP50_per_class"]) == set(demo_manifest.class_names)
    assert len(demo_manifest.class_names) >= 4
    assert "scratch" in demo_manifest.class_names


def test_tampered_model_is_refused(tmp_path, demo_model):
    """One flipped byte in the model file and it is not loaded: the error names both hashes."""
    bad = tmp_path / demo_model.name
    shutil.copyfile(demo_model, bad)
    shutil.copyfile(manifest_path_for(demo_model), manifest_path_for(bad))
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="sha256"):
        open_model(bad, warmup=False)


def test_model_without_manifest_is_refused(tmp_path, demo_model):
    """A bare ONNX file with no manifest is not loaded."""
    bare = tmp_path / "bare.onnx"
    shutil.copyfile(demo_model, bare)
    with pytest.raises(ManifestError, match="manifest"):
        open_model(bare, warmup=False)


def test_manifest_rejects_bad_fields(demo_manifest):
    """Manifests are validated: a malformed sha256 or unknown field is an error."""
    data = demo_manifest.to_dict()
    with pytest.raises(ValueError, match="sha256"):
        Manifest(**{**data, "sha256": "not-a-hash"})
    with pytest.raises(ValueError, match="extra"):
        Manifest(**{**data, "surprise": 1})


def test_calibration_images_give_their_expected_detections(demo_model, demo_manifest, calibration_dir):
    """Our runtime (no torch) reproduces the detections recorded in the manifest at export time."""
    calib = demo_manifest.calibration
    model = open_model(demo_model, settings=DetectorSettings(conf_threshold=calib["conf"], iou_threshold=calib["iou"],
                                                             rect=calib.get("rect", False)), warmup=False)
    report = check_calibration(model.detector, calib, calibration_dir)
    assert report.problems == []
    assert report.images == len(calib["images"]) >= 3
    assert report.expected >= 4, "the calibration set must exercise the model"


def test_calibration_check_catches_a_wrong_expectation(demo_model, demo_manifest, calibration_dir):
    """Shift one expected box and the check reports that image: it can fail."""
    calib = demo_manifest.calibration
    entries = [dict(e) for e in calib["images"]]
    first = next(e for e in entries if e["expected"])
    moved = dict(first["expected"][0])
    moved["box"] = [v + 40 for v in moved["box"]]
    first["expected"] = [moved, *first["expected"][1:]]
    model = open_model(demo_model, settings=DetectorSettings(rect=calib.get("rect", False)), warmup=False)
    report = check_calibration(model.detector, {**calib, "images": entries}, calibration_dir)
    assert not report.ok
    assert any(first["file"] in p for p in report.problems)


def test_compare_reports_missing_and_unexpected():
    """Expected-but-absent and present-but-unexpected detections are both problems."""
    got = sv.Detections(xyxy=np.array([[0, 0, 10, 10]], np.float32), confidence=np.array([0.9], np.float32),
                        class_id=np.array([1]))
    problems = compare([{"class_id": 0, "box": [0, 0, 10, 10], "confidence": 0.9}], got, where="x")
    assert any("not found" in p for p in problems)
    assert any("unexpected" in p for p in problems)
    assert compare([{"class_id": 1, "box": [0, 0, 10, 10], "confidence": 0.9}], got, where="x") == []
