"""The `edge-agent` command line, run as a user would run it."""

import json
import subprocess
import sys

import cv2
import numpy as np
import supervision as sv

from edge_agent.inference.calibration import compare


def _edge_agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge_agent", *args], capture_output=True, text=True,
                          timeout=120, check=False)


def test_help_lists_subcommands():
    """`edge-agent --help` names the subcommands."""
    out = _edge_agent("--help")
    assert out.returncode == 0
    assert "infer" in out.stdout


def test_infer_prints_the_calibration_detections(demo_model, demo_manifest, calibration_dir, tmp_path):
    """`infer` prints JSON whose objects are the calibration image's expected detections."""
    entry = next(e for e in demo_manifest.calibration["images"] if e["expected"])
    image = calibration_dir / entry["file"]
    rect = ["--rect"] if demo_manifest.calibration.get("rect") else []
    out = _edge_agent("infer", "--model", str(demo_model), str(image), "--annotate", str(tmp_path), *rect)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["model"]["sha256"] == demo_manifest.sha256[:12]
    assert (doc["width"], doc["height"]) == (1280, 720)
    assert {"label", "class_id", "confidence", "box"} <= set(doc["objects"][0])

    objs = doc["objects"]
    got = sv.Detections(xyxy=np.array([o["box"] for o in objs], np.float32),
                        confidence=np.array([o["confidence"] for o in objs], np.float32),
                        class_id=np.array([o["class_id"] for o in objs]))
    # The JSON rounds boxes to 0.1 px and confidences to 1e-4: well inside the match tolerances.
    assert compare(entry["expected"], got, where=entry["file"]) == []
    annotated = cv2.imread(str(tmp_path / (image.stem + ".jpg")))
    assert annotated is not None
    assert annotated.shape == (720, 1280, 3)


def test_infer_unreadable_image_fails_clearly(demo_model, tmp_path):
    """An image that cannot be read gives exit code 1 and names the file."""
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"nope")
    out = _edge_agent("infer", "--model", str(demo_model), str(bad))
    assert out.returncode == 1
    assert "broken.jpg" in out.stderr
