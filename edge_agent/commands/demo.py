"""`edge-agent demo`: the daemon on the bundled demo cameras, with a live summary read from MQTT.

The summary is built from what a subscriber receives, not from the daemon's internals, so what
it shows is what an alarm panel on the same broker would see.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

from edge_agent.commands.run import print_config_error
from edge_agent.config.loader import ConfigError, load_config
from edge_agent.daemon import Daemon, DaemonError
from edge_agent.devtools.mosquitto import MosquittoServer, broker_answers
from edge_agent.devtools.mqtt_watch import MqttWatch, Received
from edge_agent.inference.runner import RunnerError
from edge_agent.manifest import ManifestError

REPO = Path(__file__).resolve().parents[2]
SUMMARY_EVERY_S = 2.0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="run on the bundled demo cameras and print a live summary",
                       description="Run the daemon on the bundled demo videos as cameras. Starts a "
                                   "private Mosquitto when no broker answers on the configured address.")
    p.add_argument("--config", type=Path, default=REPO / "config" / "demo.yaml")
    p.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                   help="stop after this long (default: until Ctrl-C)")
    p.set_defaults(func=run)


def summarize(window: list[Received], statuses: dict[str, str], elapsed_s: float) -> list[str]:
    per_camera: dict[str, list[dict[str, Any]]] = {}
    for msg in window:
        if msg.topic.endswith("/detections"):
            doc = msg.json()
            per_camera.setdefault(doc["camera"], []).append(doc)
    lines = []
    for camera in sorted(set(per_camera) | set(statuses)):
        docs = per_camera.get(camera, [])
        labels: Counter[str] = Counter()
        totals = []
        for doc in docs:
            labels.update(str(o["label"]) for o in doc["objects"])
            totals.append(doc["timings_ms"]["total"])
        seen = ", ".join(f"{n} {label}" for label, n in labels.most_common()) or "nothing"
        latency = f"p50 {np.percentile(totals, 50):5.1f} ms" if totals else "p50    -   "
        lines.append(f"  {camera:<8} {statuses.get(camera, '?'):<12} {len(docs) / elapsed_s:5.1f} fps  "
                     f"{latency}  objects seen: {seen}")
    return lines


def _watch_loop(watch: MqttWatch, duration_s: float | None, stop: threading.Event) -> None:
    started = last = time.monotonic()
    seen = 0
    while not stop.wait(SUMMARY_EVERY_S):
        now = time.monotonic()
        messages = watch.snapshot()
        window, seen = messages[seen:], len(messages)
        statuses = {m.topic.split("/")[-2]: json.loads(m.payload)["state"]
                    for m in messages if m.topic.endswith("/status") and m.payload}
        print(f"[{now - started:6.1f} s] detections received over MQTT in the last {now - last:.1f} s:")
        print("\n".join(summarize(window, statuses, now - last)), flush=True)
        for msg in window:
            if msg.topic.endswith("/alarms"):
                a = msg.json()
                extra = f", {a['duration_s']:.1f} s" if a.get("duration_s") is not None else ""
                print(f"  ALARM {a['state']:<6} {a['rule']} on {a['camera']} ({a['count']} x "
                      f"{'/'.join(a['labels'])}{extra}) id {a['id'][:8]}")
        last = now
        if duration_s is not None and now - started >= duration_s:
            return


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print_config_error(exc)
        return 1
    stop = threading.Event()

    def handle(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)
    with contextlib.ExitStack() as stack:
        host, port = config.mqtt.host, config.mqtt.port
        if not broker_answers(host, port, 0.5):
            broker = stack.enter_context(MosquittoServer())
            host, port = broker.host, broker.port
            print(f"no MQTT broker answers on {config.mqtt.host}:{config.mqtt.port}; "
                  f"started a private Mosquitto on {host}:{port}")
            config = config.model_copy(update={"mqtt": config.mqtt.model_copy(update={"host": host,
                                                                                      "port": port})})
        watch = stack.enter_context(MqttWatch(host, port, f"{config.mqtt.topic_prefix}/{config.node.name}/#",
                                              max_keep=50_000))
        daemon = Daemon(config)
        try:
            daemon.start()
        except (DaemonError, ManifestError, RunnerError) as exc:
            print(f"edge-agent demo: cannot start: {exc}", file=sys.stderr)
            return 1
        label = daemon.model.label if daemon.model else "?"
        print(f"edge-agent demo: {len(config.cameras)} cameras, model {label}, MQTT {host}:{port} "
              f"under {config.mqtt.topic_prefix}/{config.node.name}/ (Ctrl-C stops)")
        try:
            _watch_loop(watch, args.duration, stop)
        finally:
            daemon.stop()
    return 0
