"""Make, verify and ship the precision variants of a model: `models/<name>.<precision>.onnx` + manifest.

A variant is accepted only if its held-out mAP50, measured by `edge_agent.evaluation` exactly as
the FP32 parent is measured in the same run, is at most `max_drop` below the parent's. A rejected
variant is not written; the report says by how much it missed. Each accepted variant gets its own
manifest (the same schema as every model): parent sha256, precision and how it was made in
`training`, the measured mAP50 and its drop in `metrics`, and the detections it gives on the
parent's calibration images (as this runtime measures them) in `calibration`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import cv2
import onnxruntime as ort

from edge_agent.evaluation import (
    EVAL_SETTINGS,
    TRAINING_JPEG_QUALITY,
    ApResult,
    evaluate,
    heldout_samples,
)
from edge_agent.inference.detector import Detector, DetectorSettings, detection_arrays, model_input_size
from edge_agent.inference.runner import load_runner
from edge_agent.manifest import Manifest, manifest_path_for, sha256_file
from edge_agent.precision.fp16 import convert_fp16
from edge_agent.precision.int8 import CalibrationMethod, calibration_inputs, quantize_int8
from edge_agent.synthetic.dataset import Sample
from edge_agent.training.train import HELDOUT_SEED

log = logging.getLogger(__name__)

Precision = Literal["fp16", "int8"]
PRECISIONS: tuple[Precision, ...] = ("fp16", "int8")
MAX_MAP50_DROP = 0.01  # one mAP point


@dataclass(frozen=True)
class VariantSettings:
    heldout_images: int | None = None  # None: as many as the parent's own held-out measurement
    max_drop: float = MAX_MAP50_DROP
    int8_method: CalibrationMethod = "percentile"
    videos: tuple[Path, ...] = ()
    video_every: int = 6  # every 6th frame of a 15 fps sample video: 50 frames per 20 s clip
    threads: int | None = None
    command: str = ""  # recorded in the manifest: how the variant was made


@dataclass(frozen=True)
class VariantReport:
    precision: Precision
    path: Path
    accepted: bool
    map50: float
    reference_map50: float
    size_bytes: int
    sha256: str | None = None
    ap50_per_class: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def drop(self) -> float:
        return self.reference_map50 - self.map50

    def to_dict(self) -> dict[str, Any]:
        # `+ 0.0` turns a rounded -0.0 (a variant a hair better than its parent) into 0.0.
        return {"precision": self.precision, "path": str(self.path), "accepted": self.accepted,
                "mAP50": round(self.map50, 4), "fp32_mAP50": round(self.reference_map50, 4),
                "mAP50_drop": round(self.drop, 4) + 0.0, "size_bytes": self.size_bytes,
                "sha256": self.sha256, "seconds": round(self.seconds, 1)}


def variant_path(model_path: Path, precision: str) -> Path:
    """`models/demo-parts.onnx` -> `models/demo-parts.int8.onnx`."""
    return model_path.with_name(f"{model_path.stem}.{precision}.onnx")


def measure(path: Path, manifest: Manifest, samples: Sequence[Sample], threads: int | None) -> ApResult:
    """Held-out mAP50 of one ONNX file with ONNX Runtime on the CPU."""
    runner = load_runner(path, "onnxruntime", threads=threads, providers=["cpu"])
    try:
        detector = Detector(runner, manifest.class_names, input_hw=manifest.input_size, dynamic_hw=False,
                            settings=EVAL_SETTINGS)
        return evaluate(detector, samples)
    finally:
        runner.close()


def _calibration_images(parent: Manifest, folder: Path) -> list[Path]:
    return [folder / e["file"] for e in parent.calibration.get("images", [])]


def _make(precision: Precision, src: Path, dst: Path, parent: Manifest,
          settings: VariantSettings) -> dict[str, Any]:
    """Write the candidate and return how it was made (for the manifest's `training`)."""
    if precision == "fp16":
        convert_fp16(src, dst)
        return {"converter": "onnxruntime.transformers.float16.convert_float_to_float16",
                "keep_io_types": True}
    calib_dir = src.parent / parent.calibration.get("dir", "")
    images = _calibration_images(parent, calib_dir)
    inputs = calibration_inputs(images, settings.videos, parent.input_size, every=settings.video_every)
    quantize_int8(src, dst, inputs, method=settings.int8_method)
    return {"quantizer": "onnxruntime.quantization.quantize_static", "format": "QDQ",
            "activations": "int8 symmetric per-tensor", "weights": "int8 symmetric per-channel",
            "bias": "float", "op_types": ["Conv"], "float_nodes": "DFL projection conv",
            "calibration_method": settings.int8_method, "calibration_frames": len(inputs),
            "calibration_sources": [str(p.relative_to(src.parent)) for p in images]
            + [f"{v.name} every {settings.video_every}th frame" for v in settings.videos]}


def calibration_settings(calibration: dict[str, Any]) -> DetectorSettings:
    """Detector settings a manifest's calibration entries were recorded with."""
    return DetectorSettings(conf_threshold=float(calibration.get("conf", 0.25)),
                            iou_threshold=float(calibration.get("iou", 0.7)),
                            rect=bool(calibration.get("rect", False)))


def _calibration_record(path: Path, parent: Manifest, folder: Path, threads: int | None) -> dict[str, Any]:
    """The variant's own detections on the parent's calibration images, as this runtime gives them
    (with the parent's thresholds and rect setting, so the same check applies to both)."""
    calib = parent.calibration
    runner = load_runner(path, "onnxruntime", threads=threads, providers=["cpu"])
    input_hw, dynamic_hw = model_input_size(runner, parent.input_size)
    detector = Detector(runner, parent.class_names, input_hw=input_hw, dynamic_hw=dynamic_hw,
                        settings=calibration_settings(calib))
    entries = []
    try:
        for entry in calib.get("images", []):
            img = cv2.imread(str(folder / entry["file"]), cv2.IMREAD_COLOR)
            if img is None:
                raise ValueError(f"cannot read calibration image {folder / entry['file']}")
            xyxy, conf, cls = detection_arrays(detector.detect([img])[0])
            expected = [{"class_id": int(c), "label": parent.class_names[int(c)],
                         "confidence": round(float(p), 5), "box": [round(float(v), 2) for v in box]}
                        for box, p, c in zip(xyxy, conf, cls, strict=True)]
            entries.append({**entry, "expected": expected})
    finally:
        runner.close()
    return {**calib, "images": entries, "reference": f"edge-agent, onnxruntime {ort.__version__} CPU"}


def _write(candidate: Path, dst: Path, parent: Manifest, report: VariantReport, *, made: dict[str, Any],
           settings: VariantSettings) -> Manifest:
    folder = dst.parent / parent.calibration.get("dir", "")
    manifest = Manifest(
        name=parent.name,
        version=f"{parent.version}+{report.precision}",
        sha256=sha256_file(candidate),
        size_bytes=candidate.stat().st_size,
        format="onnx",
        input_size=parent.input_size,
        class_names=parent.class_names,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        parent=parent.sha256,
        training={
            "precision": report.precision, "parent_sha256": parent.sha256,
            "parent_version": parent.version, **made,
            "onnxruntime": ort.__version__, "python": platform.python_version(),
            "command": settings.command,
        },
        metrics={
            "split": "heldout", "seed": HELDOUT_SEED, "images": _heldout_count(parent, settings),
            "mAP50": round(report.map50, 4), "fp32_mAP50": round(report.reference_map50, 4),
            "mAP50_drop": round(report.drop, 4) + 0.0, "max_drop": settings.max_drop,
            "AP50_per_class": {k: round(v, 4) for k, v in report.ap50_per_class.items()},
            "measured_with": f"edge_agent.evaluation (all-point AP at IoU 0.5, conf 0.001), onnxruntime "
                             f"{ort.__version__} CPU, held-out images JPEG q{TRAINING_JPEG_QUALITY}",
        },
        calibration=_calibration_record(candidate, parent, folder, settings.threads),
    )
    candidate.replace(dst)  # same folder, so the rename is atomic
    manifest_path_for(dst).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
    return manifest


def _heldout_count(parent: Manifest, settings: VariantSettings) -> int:
    return settings.heldout_images or int(parent.metrics.get("images", 120))


def make_variants(model_path: Path, precisions: Sequence[Precision],
                  settings: VariantSettings | None = None) -> tuple[ApResult, list[VariantReport]]:
    """Make, measure and (if accepted) write each variant beside `model_path`.

    Returns the FP32 measurement and one report per precision. Variants share the parent's
    calibration images, so they live in the same folder.
    """
    settings = settings or VariantSettings()
    parent = Manifest.load(manifest_path_for(model_path))
    parent.verify_file(model_path)
    samples = heldout_samples(_heldout_count(parent, settings))
    reference = measure(model_path, parent, samples, settings.threads)
    log.info("fp32 %s: held-out mAP50 %.4f on %d images", model_path.name, reference.map50, len(samples))
    reports = []
    for precision in precisions:
        started = time.monotonic()
        dst = variant_path(model_path, precision)
        with tempfile.TemporaryDirectory(prefix=".variant-", dir=dst.parent) as tmp:
            candidate = Path(tmp) / dst.name
            made = _make(precision, model_path, candidate, parent, settings)
            result = measure(candidate, parent, samples, settings.threads)
            accepted = reference.map50 - result.map50 <= settings.max_drop
            report = VariantReport(precision, dst, accepted, result.map50, reference.map50,
                                   candidate.stat().st_size, ap50_per_class=result.ap50_per_class)
            if accepted:
                manifest = _write(candidate, dst, parent, report, made=made, settings=settings)
                report = dataclasses.replace(report, sha256=manifest.sha256)
            else:
                log.warning("%s variant rejected: mAP50 %.4f is %.4f below fp32 %.4f (allowed %.4f)",
                            precision, result.map50, reference.map50 - result.map50, reference.map50,
                            settings.max_drop)
        reports.append(dataclasses.replace(report, seconds=time.monotonic() - started))
    return reference, reports


def copy_model(model_path: Path, folder: Path) -> Path:
    """Copy a model with its manifest and calibration folder (for trying variants elsewhere)."""
    manifest = Manifest.load(manifest_path_for(model_path))
    dst = folder / model_path.name
    shutil.copyfile(model_path, dst)
    shutil.copyfile(manifest_path_for(model_path), manifest_path_for(dst))
    calib = manifest.calibration.get("dir")
    if calib:
        shutil.copytree(model_path.parent / calib, folder / calib, dirs_exist_ok=True)
    return dst
