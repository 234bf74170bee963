"""Train the demo detector from scratch on synthetic images and ship it into `models/`.

    python -m edge_agent.training --out models --epochs 70

Runs on a CPU-only machine and on a GPU box (`--device 0`). Needs the `train` extra
(ultralytics, torch, onnx, onnxslim); nothing here is imported by the runtime.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge_agent.manifest import Manifest, sha256_file
from edge_agent.synthetic import dataset
from edge_agent.synthetic.scene import CLASS_NAMES

log = logging.getLogger("edge_agent.training")

# Seeds of the splits. The held-out seed is used for nothing but the final measurement.
TRAIN_SEED, VAL_SEED, HELDOUT_SEED, CALIBRATION_SEED = 1001, 2002, 3003, 4004


def _offline_ultralytics(config_dir: Path) -> None:
    """Ultralytics must never reach for the network: no weights, fonts, pip installs or analytics."""
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "0"
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    config_dir.mkdir(parents=True, exist_ok=True)
    from edge_agent.training import torchvision_fallback

    torchvision_fallback.install()
    from ultralytics import settings

    settings.update({"sync": False})


def _heldout_metrics(onnx_path: Path, data_yaml: Path, imgsz: int, count: int) -> dict[str, Any]:
    from ultralytics import YOLO

    metrics = YOLO(str(onnx_path), task="detect").val(
        data=str(data_yaml), split="test", imgsz=imgsz, batch=1, device="cpu", plots=False,
        verbose=False,
    )
    per_class = {CLASS_NAMES[int(c)]: round(float(ap), 4)
                 for c, ap in zip(metrics.box.ap_class_index, metrics.box.ap50, strict=True)}
    return {
        "split": "heldout",
        "seed": HELDOUT_SEED,
        "images": count,
        "mAP50": round(float(metrics.box.map50), 4),
        "mAP50_95": round(float(metrics.box.map), 4),
        "AP50_per_class": per_class,
        "measured_with": f"ultralytics {metrics.__class__.__module__.split('.')[0]} val on the ONNX file",
    }


def _write_calibration(onnx_path: Path, out_dir: Path, imgsz: int, count: int) -> list[dict[str, Any]]:
    """Camera-sized images and the detections Ultralytics' own predict gives on the ONNX file."""
    import cv2
    from ultralytics import YOLO

    out_dir.mkdir(parents=True, exist_ok=True)
    reference = YOLO(str(onnx_path), task="detect")
    entries = []
    for i, sample in enumerate(dataset.generate(CALIBRATION_SEED, count, width=1280, height=720)):
        name = f"calib_{i:02d}.png"  # lossless, so every decoder sees the same pixels
        cv2.imwrite(str(out_dir / name), sample.image)
        # rect=True is Ultralytics' predict default (and the daemon's): 16:9 frames run at 320x192.
        result = reference.predict(sample.image, imgsz=imgsz, conf=0.25, iou=0.7, rect=True, verbose=False)[0]
        boxes = result.boxes
        expected = [
            {"class_id": int(c), "label": CLASS_NAMES[int(c)], "confidence": round(float(p), 5),
             "box": [round(float(v), 2) for v in xyxy]}
            for c, p, xyxy in zip(boxes.cls, boxes.conf, boxes.xyxy, strict=True)
        ]
        truth = [{"class_id": b.class_id, "label": CLASS_NAMES[b.class_id],
                  "box": [round(v, 2) for v in (b.x1, b.y1, b.x2, b.y2)]} for b in sample.boxes]
        entries.append({"file": name, "expected": expected, "ground_truth": truth})
    return entries


def train(args: argparse.Namespace) -> Manifest:
    work = Path(args.work or tempfile.mkdtemp(prefix="edge-agent-train-"))
    _offline_ultralytics(work / "ultralytics-config")
    import torch
    import ultralytics
    from ultralytics import YOLO

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    data_root = work / "data"
    log.info("generating %d train / %d val / %d held-out images in %s",
             args.train_images, args.val_images, args.heldout_images, data_root)
    dataset.write_split(data_root, "train", dataset.generate(TRAIN_SEED, args.train_images))
    dataset.write_split(data_root, "val", dataset.generate(VAL_SEED, args.val_images))
    dataset.write_split(data_root, "heldout", dataset.generate(HELDOUT_SEED, args.heldout_images))
    train_yaml = dataset.write_data_yaml(data_root, {"train": "train", "val": "val"})
    heldout_yaml = dataset.write_data_yaml(data_root, {"train": "train", "val": "val", "test": "heldout"})

    started = time.monotonic_ns()
    model = YOLO(args.arch)  # architecture yaml only: no pretrained weights, nothing downloaded
    model.train(
        data=str(train_yaml), epochs=args.epochs, imgsz=args.imgsz, batch=args.batch,
        device=args.device, workers=args.workers, pretrained=False, seed=0, deterministic=True,
        project=str(work / "runs"), name="train", exist_ok=True, plots=False, verbose=False,
    )
    train_s = (time.monotonic_ns() - started) / 1e9
    best = Path(model.trainer.best)
    onnx_tmp = Path(YOLO(str(best)).export(format="onnx", dynamic=True, simplify=True,
                                           imgsz=args.imgsz, device="cpu"))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / f"{args.name}.onnx"
    shutil.copyfile(onnx_tmp, onnx_path)
    metrics = _heldout_metrics(onnx_path, heldout_yaml, args.imgsz, args.heldout_images)
    log.info("held-out mAP50 %.4f (mAP50-95 %.4f)", metrics["mAP50"], metrics["mAP50_95"])
    calib_dir = out / f"{args.name}.calibration"
    calibration = _write_calibration(onnx_path, calib_dir, args.imgsz, args.calibration_images)

    manifest = Manifest(
        name=args.name,
        version=args.version,
        sha256=sha256_file(onnx_path),
        size_bytes=onnx_path.stat().st_size,
        format="onnx",
        input_size=(args.imgsz, args.imgsz),
        class_names=CLASS_NAMES,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        parent=None,
        training={
            "architecture": args.arch, "pretrained": False, "epochs": args.epochs,
            "imgsz": args.imgsz, "batch": args.batch, "device": str(args.device),
            "train_images": args.train_images, "val_images": args.val_images,
            "seeds": {"train": TRAIN_SEED, "val": VAL_SEED, "heldout": HELDOUT_SEED,
                      "calibration": CALIBRATION_SEED},
            "generator": "edge_agent.synthetic (640x360 train, 1280x720 calibration)",
            "duration_s": round(train_s, 1),
            "ultralytics": ultralytics.__version__, "torch": torch.__version__,
            "python": platform.python_version(),
            "command": "python -m edge_agent.training " + " ".join(sys.argv[1:]),
        },
        metrics=metrics,
        calibration={"dir": calib_dir.name, "conf": 0.25, "iou": 0.7, "rect": True, "images": calibration},
    )
    manifest_path = out / f"{args.name}.manifest.json"
    manifest_path.write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
    log.info("wrote %s (sha256 %s) and %s", onnx_path, manifest.sha256[:12], manifest_path)
    return manifest


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m edge_agent.training", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="models", help="where the .onnx, manifest and calibration go")
    p.add_argument("--name", default="demo-parts")
    p.add_argument("--version", default="1.0.0")
    p.add_argument("--arch", default="yolov8n.yaml", help="ultralytics model yaml (yolov8n, yolo11n)")
    p.add_argument("--epochs", type=int, default=70)
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--device", default="cpu", help="'cpu' or a CUDA index such as 0")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--train-images", type=int, default=320)
    p.add_argument("--val-images", type=int, default=64)
    p.add_argument("--heldout-images", type=int, default=120)
    p.add_argument("--calibration-images", type=int, default=4)
    p.add_argument("--work", help="scratch folder for data and runs (default: a temp dir)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    manifest = train(parse_args(argv))
    print(json.dumps({"model": manifest.name, "sha256": manifest.sha256,
                      "heldout_mAP50": manifest.metrics["mAP50"]}))
    return 0
