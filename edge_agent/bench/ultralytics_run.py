"""Ultralytics' own multi-stream predict on the bench cameras, in a child process.

    YOLO(model).predict(source="cameras.streams", stream=True, imgsz=320, conf=..., iou=..., rect=True)

A child process, so that torch, its thread pools and OpenCV's capture threads never share an
interpreter (or a GIL) with the daemon measured in the parent. Ultralytics' `LoadStreams` opens
one OpenCV capture thread per URL and keeps only each stream's newest frame; every batch holds one
fresh frame per stream, and predict yields one result per frame, so results per second over a
window after warm-up are its processed frames/s.

    python -m edge_agent.bench.ultralytics_run --streams F --model M --imgsz 320 --conf 0.25 \
        --iou 0.7 --warmup-s 3 --seconds 10          # prints one JSON line
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.bench.cpu import CpuSample, CpuUse, child_pids

_START_ALLOWANCE_S = 90.0  # importing torch + ultralytics and opening every stream, on a busy box


@dataclass(frozen=True, slots=True)
class UltralyticsStep:
    cameras: int
    camera_fps: float
    processed_fps: float
    frames: int
    window_s: float
    cpu_percent: float  # the child's own CPU over the window (all its threads), % of one core
    input_shapes: tuple[tuple[int, ...], ...]  # NCHW tensors its predictor ran
    error: str | None = None
    other_percent: float = 0.0  # load from processes not ours while it ran, % of one core

    @property
    def offered_fps(self) -> float:
        return self.cameras * self.camera_fps


def ultralytics_unavailable() -> str | None:
    for module in ("ultralytics", "torch"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (scripts/setup.sh train installs the train extra)"
    return None


def run_step(urls: list[str], *, model: Path, imgsz: int, conf: float, iou: float, camera_fps: float,
             warmup_s: float, window_s: float, workdir: Path) -> UltralyticsStep:
    """Run the child on these cameras; a failure is returned as a step with `error` set."""
    workdir.mkdir(parents=True, exist_ok=True)
    streams = workdir / f"cameras-{len(urls)}.streams"
    streams.write_text("\n".join(urls) + "\n")
    log_path = workdir / f"ultralytics-{len(urls)}.log"
    cmd = [sys.executable, "-m", "edge_agent.bench.ultralytics_run", "--streams", str(streams),
           "--model", str(model.resolve()), "--imgsz", str(imgsz), "--conf", str(conf), "--iou", str(iou),
           "--warmup-s", str(warmup_s), "--seconds", str(window_s)]
    env = {**os.environ, "YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "0",
           "YOLO_CONFIG_DIR": str(workdir / "yolo-config"),
           # Our cameras speak RTSP over TCP only; without this FFmpeg first tries UDP and falls back.
           "OPENCV_FFMPEG_CAPTURE_OPTIONS": "rtsp_transport;tcp"}
    timeout_s = _START_ALLOWANCE_S + warmup_s + window_s + 2.0 * len(urls)
    helpers = child_pids()  # cameras and broker; the child is counted once reaped
    cpu_start = CpuSample.take(helpers)
    try:
        with log_path.open("wb") as log:
            # Our own interpreter and module, an argument list: no shell.
            done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, env=env,  # noqa: S603
                                  timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        done = None
    other = CpuUse.between(cpu_start, CpuSample.take(helpers)).other_percent
    failed = UltralyticsStep(len(urls), camera_fps, 0.0, 0, 0.0, 0.0, (), other_percent=other)
    if done is None:
        return _with_error(failed, f"no result within {timeout_s:.0f} s; log {log_path}")
    lines = done.stdout.decode(errors="replace").strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = log_path.read_text(errors="replace")[-800:]
        return _with_error(failed, f"exit {done.returncode}; log {log_path}:\n{tail}")
    doc = json.loads(lines[-1])
    return UltralyticsStep(len(urls), camera_fps, float(doc["processed_fps"]), int(doc["frames"]),
                           float(doc["window_s"]), float(doc["cpu_percent"]),
                           tuple(tuple(s) for s in doc["input_shapes"]), other_percent=other)


def _with_error(step: UltralyticsStep, error: str) -> UltralyticsStep:
    return dataclasses.replace(step, error=error)


# --- the child ------------------------------------------------------------------------------


def _predict(args: argparse.Namespace) -> dict[str, Any]:
    from edge_agent.training import torchvision_fallback

    Path(os.environ.get("YOLO_CONFIG_DIR", ".")).mkdir(parents=True, exist_ok=True)
    torchvision_fallback.install()  # before ultralytics imports torchvision
    from ultralytics import YOLO, settings

    settings.update({"sync": False})
    yolo = YOLO(str(args.model), task="detect")
    results = yolo.predict(source=str(args.streams), stream=True, imgsz=args.imgsz, conf=args.conf,
                           iou=args.iou, rect=True, device="cpu", verbose=False)
    predictor = yolo.predictor  # exists once predict() returned its generator
    shapes: set[tuple[int, ...]] = set()
    preprocess = predictor.preprocess

    def recording_preprocess(images: Any) -> Any:
        tensor = preprocess(images)
        shapes.add(tuple(int(d) for d in tensor.shape))
        return tensor

    predictor.preprocess = recording_preprocess
    warm_until_ns = window_end_ns = 0
    frames, cpu_start_s = 0, 0.0
    for _ in results:
        now = time.monotonic_ns()
        if not warm_until_ns:  # first result: every stream is open and the model warmed up
            warm_until_ns = now + int(args.warmup_s * 1e9)
            window_end_ns = warm_until_ns + int(args.seconds * 1e9)
            continue
        if now < warm_until_ns:
            continue
        if now >= window_end_ns:
            break
        if not frames:
            cpu_start_s = time.process_time()
        frames += 1  # results of one batch arrive together: counting arrivals in the window is exact
    return {"processed_fps": round(frames / args.seconds, 2), "frames": frames, "window_s": args.seconds,
            "cpu_percent": round(100 * (time.process_time() - cpu_start_s) / args.seconds, 1),
            "input_shapes": sorted(shapes)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Ultralytics multi-stream predict: processed frames/s")
    p.add_argument("--streams", type=Path, required=True, help="a .streams file: one URL per line")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--conf", type=float, default=0.25)
    p.add_argument("--iou", type=float, default=0.7)
    p.add_argument("--warmup-s", type=float, default=3.0)
    p.add_argument("--seconds", type=float, default=10.0)
    args = p.parse_args(argv)
    print(json.dumps(_predict(args)), flush=True)
    # LoadStreams' capture threads would each be joined with a 5 s timeout at exit; the parent
    # has its number already, so leave at once.
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
