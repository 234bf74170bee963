"""The bench's output: Markdown tables for people (and docs/performance.md), one JSON line for tools."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from edge_agent.telemetry.stats import STAGES

if TYPE_CHECKING:
    from edge_agent.bench.bound import BoundResult
    from edge_agent.bench.suite import BenchReport

TARGET_RATIO_VS_BOUND = 0.90
TARGET_RATIO_VS_ULTRALYTICS = 1.5
JSON_FIELDS = ("pipeline_fps", "bound_fps", "model_fps", "ultralytics_fps", "ratio_vs_bound",
               "ratio_vs_ultralytics", "cameras_at_15fps", "p99_total_ms")


def ratio(numerator: float, denominator: float | None) -> float | None:
    if denominator is None or denominator <= 0 or math.isnan(denominator):
        return None
    return round(numerator / denominator, 3)


def _r(value: float | None, digits: int = 1) -> float | None:
    return None if value is None or math.isnan(value) else round(value, digits)


def summary(report: BenchReport) -> dict[str, Any]:
    """The final JSON line: the issue's fields first, then what they were measured with."""
    sat, half = report.saturated, report.half_load
    half_check = report.checks[half.cameras]
    best_ultra = report.ultralytics_best
    ultra_fps = best_ultra.processed_fps if best_ultra else None
    bound_fps = report.bound.bound_fps
    to_bound = ratio(sat.processed_fps, bound_fps)
    to_ultra = ratio(sat.processed_fps, ultra_fps)
    o = report.options
    return {
        "pipeline_fps": _r(sat.processed_fps),
        "bound_fps": _r(bound_fps),
        "model_fps": _r(report.bound.model_fps),
        "ultralytics_fps": _r(ultra_fps),
        "ratio_vs_bound": to_bound,
        "ratio_vs_ultralytics": to_ultra,
        "cameras_at_15fps": report.cameras_sustained,
        "p99_total_ms": _r(half_check.p99_total_ms),
        "p99_budget_ms": _r(half_check.budget_ms),
        "half_load_cameras": half.cameras,
        "pipeline_cameras": sat.cameras,
        "ultralytics_cameras": best_ultra.cameras if best_ultra else None,
        "paced_limit_found": report.paced_limit_found,
        "drop_fraction_at_saturation": round(sat.drop_fraction, 4),
        "cpu_percent_at_saturation": sat.cpu.own_percent,
        "camera_fps": report.clip.fps,
        "input_hw": list(report.bound.input_hw),
        "max_batch": o.max_batch,
        "max_wait_ms": o.max_wait_ms,
        "threads": o.threads,
        "workers": o.workers,
        "cores": report.bound.cores,
        "conf": o.confidence,
        "iou": o.iou,
        "model": report.model_label,
        "quick": o.quick,
        "duration_s": round(report.duration_s, 1),
        "targets_met": {
            "ratio_vs_bound": None if to_bound is None else to_bound >= TARGET_RATIO_VS_BOUND,
            "ratio_vs_ultralytics": None if to_ultra is None else to_ultra >= TARGET_RATIO_VS_ULTRALYTICS,
            "p99_at_half_load": half_check.p99_total_ms <= half_check.budget_ms,
        },
    }


def json_line(report: BenchReport) -> str:
    return json.dumps(summary(report), separators=(", ", ": "))


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _f(value: float, digits: int = 1) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def _bound_section(b: BoundResult) -> list[str]:
    rows = []
    for c in b.costs:
        others = "; ".join(f"{k}: {v:.3f}" for k, v in c.tried.items() if k != c.config)
        rows.append([c.stage, f"{c.cpu_ms:.3f}", c.config, others or "-"])
    total = sum(c.cpu_ms for c in b.costs)
    rows.append(["**sum**", f"**{total:.3f}**", "", ""])
    lines = ["### Machine bound: each stage alone, CPU per frame", ""]
    lines += _table(["stage", "CPU ms/frame", "cheapest configuration", "other configurations (ms/frame)"], rows)
    lines += ["", (f"Bound = {b.cores} cores x 1000 / {total:.3f} ms = **{b.bound_fps:.1f} frames/s** at input "
              f"{b.input_hw[0]}x{b.input_hw[1]} (frames decoded to {b.scaled_hw[0]}x{b.scaled_hw[1]}). "
              f"Decoding alone costs {b.notes.get('decode_only_ms', math.nan):.3f} ms/frame; "
              f"{b.detections_per_frame:.1f} detections per frame on the sample frames. Other processes "
              f"used {b.notes.get('other_cpu_percent', math.nan):.0f}% of a core while this was measured."), ""]
    rows = [[r.label, f"{r.wall_ms_per_batch:.2f}", f"{r.images_per_s:.1f}", f"{r.cpu_ms_per_image:.2f}"]
            for r in b.rates]
    lines += ["### Pure model throughput (ONNX Runtime, real frames)", ""]
    lines += _table(["configuration", "wall ms/batch", "images/s", "CPU ms/image"], rows)
    return [*lines, ""]


def _sweep_section(report: BenchReport) -> list[str]:
    rows = []
    for s in report.pipeline:
        c = report.checks[s.cameras]
        rows.append([
            str(s.cameras), f"{s.offered_fps:.0f}", f"{s.processed_fps:.1f}", f"{100 * s.drop_fraction:.1f}",
            str(s.slot_drops), f"{s.mean_batch:.2f} ({100 * s.batch_fill:.0f}%)",
            "/".join(_f(s.stage_ms("total", q)) for q in ("p50", "p95", "p99")), _f(c.budget_ms),
            f"{s.cpu.own_percent:.0f}", f"{s.cpu.helpers_percent:.0f}", f"{s.cpu.other_percent:.0f}",
            "yes" if c.sustained else "no",
        ])
    lines = [f"### edge-agent pipeline, cameras live at {report.clip.fps:g} fps", ""]
    lines += _table(["cameras", "offered fps", "processed fps", "drops %", "slot drops", "mean batch (fill)",
                     "total p50/p95/p99 ms", "p99 budget ms", "CPU daemon %", "CPU cameras+broker %",
                     "CPU other %", "sustained"], rows)
    sat, half = report.saturated, report.half_load
    rows = [[stage, *(_f(sat.stage_ms(stage, q)) for q in ("p50", "p95", "p99")),
             *(_f(half.stage_ms(stage, q)) for q in ("p50", "p95", "p99"))] for stage in STAGES]
    lines += ["", (f"Per-stage latency (ms) at saturation ({sat.cameras} cameras) and at half load "
              f"({half.cameras} cameras):"), ""]
    lines += _table(["stage", "sat p50", "sat p95", "sat p99", "half p50", "half p95", "half p99"], rows)
    groups = list(dict.fromkeys([*sat.threads_cpu, *half.threads_cpu]))
    rows = [[g, _f(sat.threads_cpu.get(g, math.nan)), _f(half.threads_cpu.get(g, math.nan))] for g in groups]
    lines += ["", "Where the daemon's CPU goes, by thread (% of one core):", ""]
    lines += _table(["threads", f"saturation ({sat.cameras} cameras)", f"half load ({half.cameras} cameras)"], rows)
    return [*lines, ""]


def _ultralytics_section(report: BenchReport) -> list[str]:
    lines = ["### Ultralytics multi-stream predict (same cameras, same ONNX file, rect)", ""]
    if report.ultralytics_skipped:
        return [*lines, f"Skipped: {report.ultralytics_skipped}.", ""]
    rows = [[str(s.cameras), f"{s.offered_fps:.0f}", "-" if s.error else f"{s.processed_fps:.1f}",
             ", ".join("x".join(map(str, shape)) for shape in s.input_shapes) or "-",
             "-" if s.error else f"{s.cpu_percent:.0f}", f"{s.other_percent:.0f}",
             (s.error or "").splitlines()[0] if s.error else ""]
            for s in report.ultralytics]
    return [*lines, *_table(["cameras", "offered fps", "processed fps", "input tensors (NCHW)", "CPU %",
                             "CPU other % (whole run)", "error"], rows), ""]


def _summary_section(report: BenchReport) -> list[str]:
    d = summary(report)
    met = d["targets_met"]

    def mark(ok: bool | None) -> str:
        return "n/a" if ok is None else ("met" if ok else "**not met**")

    rows = [
        ["pipeline, saturated", f"{d['pipeline_fps']} fps ({d['pipeline_cameras']} cameras)", ""],
        ["machine bound", f"{d['bound_fps']} fps", ""],
        ["ratio vs bound", str(d["ratio_vs_bound"]), f">= {TARGET_RATIO_VS_BOUND}: {mark(met['ratio_vs_bound'])}"],
        ["Ultralytics, best", "-" if d["ultralytics_fps"] is None
         else f"{d['ultralytics_fps']} fps ({d['ultralytics_cameras']} cameras)", ""],
        ["ratio vs Ultralytics", "-" if d["ratio_vs_ultralytics"] is None else str(d["ratio_vs_ultralytics"]),
         f">= {TARGET_RATIO_VS_ULTRALYTICS}: {mark(met['ratio_vs_ultralytics'])}"],
        ["pure model", f"{d['model_fps']} images/s", ""],
        [f"cameras sustained at {d['camera_fps']:g} fps", str(d["cameras_at_15fps"])
         + ("" if d["paced_limit_found"] else " (every count tried passed: a lower bound)"), ""],
        ["p99 capture-to-publish at half load", f"{d['p99_total_ms']} ms ({d['half_load_cameras']} cameras)",
         f"<= {d['p99_budget_ms']} ms: {mark(met['p99_at_half_load'])}"],
    ]
    return ["### Summary", "", *_table(["", "measured", "target"], rows), ""]


def render(report: BenchReport) -> str:
    o, m = report.options, report.machine
    lines = [f"## edge-agent bench{' (--quick)' if o.quick else ''}", "",
             (f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory']}, {m['os']}, Python {m['python']}; "
             f"{m['packages']}."), "",
             (f"Model {report.model_label}, input {report.bound.input_hw[0]}x{report.bound.input_hw[1]} (rect), "
             f"conf {o.confidence}, iou {o.iou}. Cameras: {report.clips} clips of {report.clip.describe()} "
             f"served over RTSP/TCP in real time. Pipeline: max_batch {o.max_batch}, max_wait_ms {o.max_wait_ms}, "
             f"inference workers {o.workers or 'default (one per core)'}, ONNX Runtime threads per worker "
             f"{o.threads or 'default (1)'}. {o.seconds:g} s per step after "
             f"{o.warmup_s:g} s warm-up; the bench took {report.duration_s:.0f} s."), ""]
    lines += _bound_section(report.bound)
    lines += _sweep_section(report)
    lines += _ultralytics_section(report)
    lines += _summary_section(report)
    return "\n".join(lines)
