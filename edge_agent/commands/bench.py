"""`edge-agent bench`: throughput and latency against the machine bound and against Ultralytics.

Progress goes to stderr; the tables (Markdown) and then one JSON line go to stdout.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from edge_agent.bench import report
from edge_agent.bench.bound import Effort
from edge_agent.bench.search import MAX_ATTEMPTS
from edge_agent.bench.suite import BenchOptions, run_bench

REPO = Path(__file__).resolve().parents[2]
_QUICK_EFFORT = Effort(repeats=1, min_pass_s=0.2, decode_frames=60)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "bench", help="measure throughput and latency against the machine bound and Ultralytics",
        description="Serve H.264 clips as live RTSP cameras and measure, with one model file, input "
                    "shape and thresholds: each stage's CPU cost alone (the machine bound), the pure "
                    "model, the daemon saturated, Ultralytics' multi-stream predict, and how many "
                    "cameras run at their frame rate within the latency budget. About 5 minutes on 2 "
                    "cores (longer when other jobs load the machine: disturbed steps are repeated); "
                    "--quick takes under a minute.")
    p.add_argument("--model", type=Path, default=REPO / "models" / "demo-parts.onnx")
    p.add_argument("--videos", type=Path, default=None,
                   help="folder of .mp4 clips to serve (default: demo/videos, else clips generated "
                        "into build/bench-videos)")
    p.add_argument("--cameras", type=int, default=None, metavar="N",
                   help="first camera count of the sweeps (default 4; 2 with --quick)")
    p.add_argument("--step", type=int, default=4, help="cameras added per sweep step (default 4)")
    p.add_argument("--max-cameras", type=int, default=None, metavar="N",
                   help="largest camera count tried (default 24; --cameras with --quick)")
    p.add_argument("--seconds", type=float, default=None,
                   help="measured seconds per step, after warm-up (default 10; 3 with --quick)")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--max-wait-ms", type=int, default=10)
    p.add_argument("--threads", type=int, default=0,
                   help="ONNX Runtime intra-op threads per inference worker (default 0: unset, as in a "
                        "config without model.threads: 1 per worker)")
    p.add_argument("--workers", type=int, default=0,
                   help="inference workers of the daemon (default 0: unset, as in a config without "
                        "model.workers: one per core)")
    p.add_argument("--conf", type=float, default=0.25)
    p.add_argument("--iou", type=float, default=0.7)
    p.add_argument("--no-ultralytics", action="store_true", help="skip Ultralytics' predict")
    p.add_argument("--quick", action="store_true", help="one short step of each: a smoke run for CI")
    p.add_argument("--json-only", action="store_true", help="print only the final JSON line")
    p.add_argument("--markdown", type=Path, default=None, help="also write the tables to this file")
    p.set_defaults(func=run)


def options_from(args: argparse.Namespace) -> BenchOptions:
    start = args.cameras or (2 if args.quick else 4)
    maximum = args.max_cameras or (start if args.quick else 24)
    if start < 1 or maximum < start or args.step < 1:
        raise ValueError(f"need 1 <= --cameras <= --max-cameras and --step >= 1 "
                         f"(got {start}, {maximum}, {args.step})")
    return BenchOptions(
        model=args.model, videos=args.videos, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
        threads=args.threads or None, workers=args.workers or None, confidence=args.conf, iou=args.iou,
        start_cameras=start,
        step=args.step, max_cameras=maximum, seconds=args.seconds or (3.0 if args.quick else 10.0),
        warmup_s=1.5 if args.quick else 3.0, quick=args.quick, ultralytics=not args.no_ultralytics,
        effort=_QUICK_EFFORT if args.quick else Effort(),
        attempts=1 if args.quick else MAX_ATTEMPTS,  # a smoke run does not wait for a quiet machine
    )


def run(args: argparse.Namespace) -> int:
    try:
        options = options_from(args)
    except ValueError as exc:
        print(f"edge-agent bench: {exc}", file=sys.stderr)
        return 2
    # The daemon logs every camera connecting; the bench's own progress lines say what matters.
    logging.getLogger("edge_agent").setLevel(logging.WARNING)
    stop = threading.Event()

    def handle(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handle)

    def say(line: str) -> None:
        if not args.json_only:
            print(line, file=sys.stderr, flush=True)

    try:
        result = run_bench(options, say, stop)
    except (RuntimeError, OSError, ValueError) as exc:
        print(f"edge-agent bench: {exc}", file=sys.stderr)
        return 1
    if args.markdown is not None:
        args.markdown.write_text(report.render(result) + "\n")
    if not args.json_only:
        print(report.render(result))
    print(report.json_line(result), flush=True)
    return 0
