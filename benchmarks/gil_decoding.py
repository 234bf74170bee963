"""Does the GIL limit the camera (decoding) threads? The daemon with N live cameras, py-spy attached.

    .venv/bin/python benchmarks/gil_decoding.py --cameras 8 16 [--seconds 10]

For each camera count: the real Daemon (as in `edge-agent bench`), cameras served live over RTSP
at their own rate, and during the measured window `py-spy record --gil` sampling which thread
holds the GIL. Reports, side by side: frames offered / decoded / processed per second (if the GIL
starved the decoding threads, decoded < offered), the share of samples in which any thread held
the GIL, and who held it. Needs py-spy (`pip install py-spy`) and ptrace rights (root, or
kernel.yama.ptrace_scope = 0).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from edge_agent.bench.cameras import CameraFarm, bench_clips
from edge_agent.bench.pipeline import PipelineOptions, run_step
from edge_agent.devtools.mosquitto import MosquittoServer

RATE_HZ = 100
# py-spy's raw lines start "thread (<native id>): <name>;frame;frame... <count>".
_THREAD = re.compile(r"thread \((0x[0-9a-f]+|\d+)\)(?:: ([^;]+))?")


def thread_group(name: str) -> str:
    for prefix, group in (("camera-", "camera threads"), ("inference", "inference workers"),
                          ("publisher", "publisher"), ("paho", "MQTT client")):
        if name.startswith(prefix):
            return group
    return name


def gil_holders(raw: Path, names: dict[int, str]) -> collections.Counter[str]:
    """Samples per thread group from py-spy's raw (collapsed) output."""
    held: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        match = _THREAD.search(stack)
        ident = int(match.group(1), 0) if match else 0
        name = names.get(ident) or (match.group(2) if match and match.group(2) else "unnamed")
        held[thread_group(name)] += int(count)
    return held


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cameras", type=int, nargs="+", default=[8, 16])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--model", type=Path, default=Path("models/demo-parts.onnx"))
    args = p.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("py-spy not found: pip install py-spy", file=sys.stderr)
        return 2
    clips = bench_clips(None if not Path("demo/videos").is_dir() else Path("demo/videos"))
    options = PipelineOptions(args.model, max_batch=8, max_wait_ms=10, threads=None, workers=None,
                              confidence=0.25, iou=0.7)
    stop = threading.Event()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, MosquittoServer() as broker, \
            CameraFarm(clips, max(args.cameras)) as farm:
        for n in args.cameras:
            raw = Path(tmp) / f"gil-{n}.raw"
            spies: list[subprocess.Popen[bytes]] = []

            def attach(window_s: float, raw: Path = raw, spies: list[subprocess.Popen[bytes]] = spies) -> None:
                spies.append(subprocess.Popen(
                    [spy, "record", "-p", str(os.getpid()), "-d", str(int(window_s)), "-r", str(RATE_HZ),
                     "--gil", "--threads", "--nonblocking", "-f", "raw", "-o", str(raw)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

            step = run_step(options, farm.urls(n), (broker.host, broker.port), camera_fps=farm.fps,
                            warmup_s=3.0, window_s=args.seconds, stop=stop, on_window=attach)
            for proc in spies:
                proc.wait(timeout=args.seconds + 30)
            names = {t.native_id: t.name for t in threading.enumerate() if t.native_id}
            held = gil_holders(raw, names) if raw.exists() else collections.Counter()
            total = RATE_HZ * int(args.seconds)
            rows.append((n, step, held, total))
    print("| cameras | offered fps | decoded fps | processed fps | GIL held (% of samples) | held by |")
    print("|---|---|---|---|---|---|")
    for n, step, held, total in rows:
        share = 100.0 * sum(held.values()) / total
        who = ", ".join(f"{g} {100.0 * c / total:.1f}%" for g, c in held.most_common(4))
        print(f"| {n} | {step.offered_fps:.0f} | {step.decoded_fps:.1f} | {step.processed_fps:.1f} | "
              f"{share:.1f} | {who} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
