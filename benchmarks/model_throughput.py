"""Pure-model throughput of the shipped model: backend inference only, no decode, no NMS.

    python benchmarks/model_throughput.py [--model models/demo-parts.onnx] [--threads N]

For each batch size and input shape: warm-up, then `--repeats` timed runs of `--iters` batches;
the median run is reported. Shapes: the model's square input and the rectangle a 16:9 camera
needs (320x192 at 320), measured side by side in one process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from edge_agent.inference.letterbox import input_shape
from edge_agent.inference.runner import load_runner
from edge_agent.manifest import Manifest, manifest_path_for


def measure(runner, batch: int, hw: tuple[int, int], iters: int, repeats: int) -> dict[str, float]:  # noqa: ANN001
    x = np.random.default_rng(0).random((batch, 3, *hw), dtype=np.float32)
    for _ in range(3):
        runner.infer(x)
    per_batch_ms = []
    cpu_per_batch_ms = []
    for _ in range(repeats):
        t0, c0 = time.monotonic_ns(), time.process_time_ns()
        for _ in range(iters):
            runner.infer(x)
        per_batch_ms.append((time.monotonic_ns() - t0) / 1e6 / iters)
        cpu_per_batch_ms.append((time.process_time_ns() - c0) / 1e6 / iters)
    ms = statistics.median(per_batch_ms)
    return {"batch": batch, "h": hw[0], "w": hw[1], "ms_per_batch": round(ms, 2),
            "ms_per_image": round(ms / batch, 2), "images_per_s": round(1000 * batch / ms, 1),
            "cpu_ms_per_image": round(statistics.median(cpu_per_batch_ms) / batch, 2)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=Path("models/demo-parts.onnx"))
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--batches", default="1,4,8")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", action="store_true", help="also print the rows as one JSON line")
    args = p.parse_args()

    manifest = Manifest.load(manifest_path_for(args.model))
    manifest.verify_file(args.model)
    runner = load_runner(args.model, threads=args.threads)
    square = manifest.input_size
    shapes = [square, input_shape((720, 1280), square, rect=True)]
    rows = [measure(runner, b, hw, args.iters, args.repeats)
            for hw in shapes for b in (int(s) for s in args.batches.split(","))]

    print(f"model {manifest.name}@{manifest.version} ({manifest.sha256[:12]}), onnxruntime, "
          f"{args.threads} intra-op threads, {os.cpu_count()} cores; median of {args.repeats} x {args.iters}")
    print(f"{'input':>9} {'batch':>5} {'ms/batch':>9} {'ms/img':>7} {'img/s':>7} {'cpu ms/img':>10}")
    for r in rows:
        print(f"{r['h']:>4}x{r['w']:<4} {r['batch']:>5} {r['ms_per_batch']:>9} {r['ms_per_image']:>7} "
              f"{r['images_per_s']:>7} {r['cpu_ms_per_image']:>10}")
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
