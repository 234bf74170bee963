"""Does the camera path's scaler change accuracy? Held-out mAP50 per way of scaling frames to the model.

    .venv/bin/python benchmarks/scaler_accuracy.py [--count 120] [--width 1280 --height 720]

Held-out synthetic scenes rendered at camera resolution, then scaled to the letterbox size the way
each path does it: OpenCV resize of the BGR frame (the CLI, the evaluator, Ultralytics), and the
daemon's camera path: the frame as a camera delivers it (YUV 4:2:0) scaled by swscale straight to
RGB with BILINEAR or FAST_BILINEAR. Same model, thresholds and evaluator for all three.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import Interpolation

from edge_agent.evaluation import ApAccumulator, GroundTruth, jpeg_roundtrip
from edge_agent.inference.detector import DetectorSettings
from edge_agent.inference.loading import open_model
from edge_agent.synthetic.dataset import Sample, generate
from edge_agent.training.train import HELDOUT_SEED


def swscale_path(samples: list[Sample], scaled_hw: tuple[int, int], interpolation: Interpolation) -> list[np.ndarray]:
    out = []
    for s in samples:
        yuv = av.VideoFrame.from_ndarray(s.image, format="bgr24").reformat(format="yuv420p")
        out.append(yuv.reformat(width=scaled_hw[1], height=scaled_hw[0], format="rgb24",
                                interpolation=interpolation).to_ndarray())
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=Path("models/demo-parts.onnx"))
    p.add_argument("--count", type=int, default=120)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    args = p.parse_args()
    model = open_model(args.model, settings=DetectorSettings(max_batch=8, rect=True))
    detector = model.detector
    samples = [Sample(jpeg_roundtrip(s.image, 92), s.boxes)
               for s in generate(HELDOUT_SEED, args.count, width=args.width, height=args.height)]
    source_hw = (args.height, args.width)
    scaled_hw = detector.scaled_hw(source_hw)
    names = [str(n) for n in detector.class_names]
    results = {}
    cv2_acc = ApAccumulator(names)
    for sample, det in zip(samples, detector.detect([s.image for s in samples]), strict=True):
        cv2_acc.add(det, GroundTruth.of(sample))
    results["OpenCV resize of BGR (CLI, evaluator)"] = cv2_acc.result()
    for label, interp in (("swscale YUV->RGB BILINEAR", Interpolation.BILINEAR),
                          ("swscale YUV->RGB FAST_BILINEAR", Interpolation.FAST_BILINEAR),
                          ("swscale YUV->RGB AREA", Interpolation.AREA)):
        images = swscale_path(samples, scaled_hw, interp)
        acc = ApAccumulator(names)
        for start in range(0, len(samples), 8):
            chunk = images[start:start + 8]
            batch, boxes = detector.preprocess(chunk, [source_hw] * len(chunk), bgr=False)
            for sample, det in zip(samples[start:start + 8], detector.postprocess(detector.infer(batch), boxes),
                                   strict=True):
                acc.add(det, GroundTruth.of(sample))
        results[label] = acc.result()
    print(f"{args.count} held-out scenes (seed {HELDOUT_SEED}) at {args.width}x{args.height}, model {model.label}")
    print("| scaling | mAP50 | " + " | ".join(f"AP50 {n}" for n in names) + " |")
    print("|---|---|" + "---|" * len(names))
    for label, r in results.items():
        per_class = " | ".join(f"{r.ap50_per_class.get(n, float('nan')):.4f}" for n in names)
        print(f"| {label} | {r.map50:.4f} | {per_class} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
