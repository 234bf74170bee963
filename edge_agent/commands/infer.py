"""`edge-agent infer`: run the model on image files and print detections as JSON lines."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import supervision as sv

from edge_agent.inference.detector import DetectorSettings, detection_arrays
from edge_agent.inference.loading import LoadedModel, open_model


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("infer", help="detect objects in image files, print JSON",
                       description="Run the model on images; print one JSON object per image.")
    p.add_argument("--model", type=Path, required=True, help="ONNX file with its .manifest.json beside it")
    p.add_argument("images", type=Path, nargs="+", metavar="IMAGE")
    p.add_argument("--conf", type=float, default=0.25, help="confidence threshold (default 0.25)")
    p.add_argument("--iou", type=float, default=0.7, help="NMS IoU threshold (default 0.7)")
    p.add_argument("--rect", action="store_true",
                   help="infer at the smallest stride-aligned rectangle instead of the square input")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores)")
    p.add_argument("--annotate", type=Path, metavar="DIR", help="also write annotated JPEGs here")
    p.set_defaults(func=run)


def detections_json(det: sv.Detections) -> list[dict[str, Any]]:
    xyxy, confidence, class_id = detection_arrays(det)
    names = det.data.get("class_name", np.array([""] * len(det)))
    return [
        {"label": str(name), "class_id": int(cid), "confidence": round(float(conf), 4),
         "box": [round(float(v), 1) for v in box]}
        for box, conf, cid, name in zip(xyxy, confidence, class_id, names, strict=True)
    ]


def _annotate(img: np.ndarray, det: sv.Detections, path: Path) -> None:
    labels = [f"{n} {c:.2f}" for n, c in zip(det.data["class_name"], detection_arrays(det)[1], strict=True)]
    out = sv.BoxAnnotator(thickness=2).annotate(img.copy(), det)
    out = sv.LabelAnnotator(text_scale=0.5).annotate(out, det, labels=labels)
    cv2.imwrite(str(path), out, [cv2.IMWRITE_JPEG_QUALITY, 90])


def run(args: argparse.Namespace) -> int:
    model: LoadedModel = open_model(
        args.model,
        settings=DetectorSettings(conf_threshold=args.conf, iou_threshold=args.iou, rect=args.rect),
        runner_options={"threads": args.threads},
        warmup=False,
    )
    if args.annotate:
        args.annotate.mkdir(parents=True, exist_ok=True)
    status = 0
    for path in args.images:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            print(f"edge-agent infer: cannot read image {path}", file=sys.stderr)
            status = 1
            continue
        (det,) = model.detector.detect([img])
        print(json.dumps({
            "image": str(path),
            "width": img.shape[1],
            "height": img.shape[0],
            "model": {"name": model.manifest.name, "version": model.manifest.version,
                      "sha256": model.manifest.sha256[:12]},
            "objects": detections_json(det),
        }))
        if args.annotate:
            _annotate(img, det, args.annotate / f"{path.stem}.jpg")
    return status
