"""The whole bench in order: bound, pipeline sweep, paced limit, half load, Ultralytics sweep.

One private Mosquitto and one camera farm serve every step. The bound is measured first, while
the cameras are not running yet, so nothing competes with the stages measured alone. One sweep
of the pipeline serves both the saturation search and the paced search: every camera is live
at its own frame rate in both, so a step is the same measurement for either question; it stops
once throughput stopped rising *and* a count failed the paced rule, then bisection pins the
paced limit to one camera.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edge_agent.bench import bound as bound_mod
from edge_agent.bench import paced, search
from edge_agent.bench import pipeline as pipeline_mod
from edge_agent.bench import ultralytics_run as ultra
from edge_agent.bench.cameras import CameraFarm, Clip, bench_clips
from edge_agent.bench.cpu import NOISY_OTHER_PERCENT, CpuSample, CpuUse, child_pids, cores, wait_for_quiet
from edge_agent.devtools.mosquitto import MosquittoServer, mosquitto_unavailable
from edge_agent.inference.detector import DetectorSettings
from edge_agent.manifest import Manifest, manifest_path_for

Say = Callable[[str], None]
QUIET_WAIT_S = 60.0  # how long a noisy step waits for the machine to calm down before it repeats
REFINE_STEPS = 2  # extra counts measured around the peak, between the sweep's fixed steps
_PACKAGES = ("onnxruntime", "av", "numpy", "paho-mqtt", "opencv-python-headless", "ultralytics", "torch")


@dataclass(frozen=True)
class BenchOptions:
    model: Path
    videos: Path | None = None
    max_batch: int = 8
    max_wait_ms: int = 10
    threads: int | None = None
    workers: int | None = None
    confidence: float = 0.25
    iou: float = 0.7
    start_cameras: int = 4
    step: int = 4
    max_cameras: int = 24
    seconds: float = 10.0
    warmup_s: float = 3.0
    quick: bool = False
    ultralytics: bool = True
    effort: bound_mod.Effort = field(default_factory=bound_mod.Effort)
    attempts: int = search.MAX_ATTEMPTS  # per measurement, when other processes disturb it

    @property
    def quiet_wait_s(self) -> float:
        return QUIET_WAIT_S if self.attempts > 1 else 0.0


@dataclass
class BenchReport:
    options: BenchOptions
    machine: dict[str, str]
    model_label: str
    clip: Clip
    clips: int
    bound: bound_mod.BoundResult
    pipeline: list[pipeline_mod.PipelineStep]  # by camera count
    checks: dict[int, paced.PacedCheck]
    ultralytics: list[ultra.UltralyticsStep]
    ultralytics_skipped: str | None
    duration_s: float = 0.0

    @property
    def saturated(self) -> pipeline_mod.PipelineStep:
        return self.pipeline[search.best([s.processed_fps for s in self.pipeline])]

    @property
    def cameras_sustained(self) -> int:
        return paced.cameras_sustained({n: c.sustained for n, c in self.checks.items()})

    @property
    def paced_limit_found(self) -> bool:
        return paced.limit_found({n: c.sustained for n, c in self.checks.items()})

    @property
    def half_load(self) -> pipeline_mod.PipelineStep:
        n = paced.half_load_cameras(self.saturated.processed_fps, self.clip.fps)
        return next(s for s in self.pipeline if s.cameras == n)

    @property
    def ultralytics_best(self) -> ultra.UltralyticsStep | None:
        ok = [s for s in self.ultralytics if s.error is None and s.frames > 0]
        return max(ok, key=lambda s: s.processed_fps) if ok else None


def describe_machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().splitlines()[0].split()[1])
        mem_gib = f"{kib / 2**20:.0f}"
    versions = []
    for package in _PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions.append(f"{package} {importlib.metadata.version(package)}")
    return {"cpu": cpu, "cores": f"{cores()} usable of {os.cpu_count()}", "memory": f"{mem_gib} GiB",
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
            "packages": ", ".join(versions)}


def paced_check(step: pipeline_mod.PipelineStep, max_wait_ms: float) -> paced.PacedCheck:
    budget = paced.latency_budget_ms(max_wait_ms, step.stage_ms("infer", "p50"))
    return paced.PacedCheck(step.cameras, step.drop_fraction, step.stage_ms("total", "p99"), budget)


def _pipeline_line(step: pipeline_mod.PipelineStep, check: paced.PacedCheck) -> str:
    verdict = "sustained" if check.sustained else check.why_not
    return (f"pipeline {step.cameras:>2} cameras: {step.processed_fps:6.1f} of {step.offered_fps:5.0f} fps, "
            f"batch {step.mean_batch:.2f}, p99 total {check.p99_total_ms:6.1f} ms, CPU {step.cpu.own_percent:.0f}% "
            f"(+{step.cpu.helpers_percent:.0f}% cameras/broker, +{step.cpu.other_percent:.0f}% other): {verdict}")


class _PipelineSweep:
    def __init__(self, options: BenchOptions, farm: CameraFarm, broker: tuple[str, int], say: Say,
                 stop: threading.Event) -> None:
        self.options, self.farm, self.broker, self.say, self.stop = options, farm, broker, say, stop
        self.steps: dict[int, pipeline_mod.PipelineStep] = {}
        self.checks: dict[int, paced.PacedCheck] = {}
        o = options
        self._pipeline = pipeline_mod.PipelineOptions(o.model, o.max_batch, o.max_wait_ms, o.threads,
                                                      o.workers, o.confidence, o.iou)

    def run(self, n: int) -> pipeline_mod.PipelineStep:
        if n in self.steps:
            return self.steps[n]
        if self.stop.is_set():
            raise pipeline_mod.StepError("stopped")

        def measure() -> pipeline_mod.PipelineStep:
            return pipeline_mod.run_step(self._pipeline, self.farm.urls(n), self.broker,
                                         camera_fps=self.farm.fps, warmup_s=self.options.warmup_s,
                                         window_s=self.options.seconds, stop=self.stop)

        step = search.retry_when_noisy(
            measure, lambda s: s.cpu.other_percent, limit=NOISY_OTHER_PERCENT,
            wait_quiet=lambda: wait_for_quiet(self.options.quiet_wait_s, self.stop),
            attempts=self.options.attempts,
            on_noise=lambda s: self.say(f"pipeline {n:>2} cameras: other processes used "
                                        f"{s.cpu.other_percent:.0f}% of a core meanwhile; measuring again"))
        self.steps[n] = step
        self.checks[n] = paced_check(step, self.options.max_wait_ms)
        self.say(_pipeline_line(step, self.checks[n]))
        return step

    def done(self, history: list[pipeline_mod.PipelineStep]) -> bool:
        rising_stopped = search.saturated([s.processed_fps for s in history])
        return rising_stopped and any(not self.checks[s.cameras].sustained for s in history)

    def sustained(self) -> dict[int, bool]:
        return {n: c.sustained for n, c in self.checks.items()}


def _ultralytics_sweep(options: BenchOptions, farm: CameraFarm, counts: list[int], *, input_side: int,
                       say: Say, workdir: Path, stop: threading.Event) -> list[ultra.UltralyticsStep]:
    def run(n: int) -> ultra.UltralyticsStep:
        if stop.is_set():
            raise pipeline_mod.StepError("stopped")

        def measure() -> ultra.UltralyticsStep:
            return ultra.run_step(farm.urls(n), model=options.model, imgsz=input_side, conf=options.confidence,
                                  iou=options.iou, camera_fps=farm.fps, warmup_s=options.warmup_s,
                                  window_s=options.seconds, workdir=workdir)

        step = search.retry_when_noisy(
            measure, lambda s: s.other_percent, limit=NOISY_OTHER_PERCENT,
            wait_quiet=lambda: wait_for_quiet(options.quiet_wait_s, stop), attempts=options.attempts,
            on_noise=lambda s: say(f"ultralytics {n:>2} cameras: other processes used {s.other_percent:.0f}% "
                                   "of a core meanwhile; measuring again"))
        if step.error:
            say(f"ultralytics {n:>2} cameras: failed: {step.error}")
        else:
            say(f"ultralytics {n:>2} cameras: {step.processed_fps:6.1f} of {step.offered_fps:5.0f} fps, "
                f"inputs {list(step.input_shapes)}, CPU {step.cpu_percent:.0f}%")
        return step

    return search.sweep(run, counts, lambda steps: steps[-1].error is not None
                        or search.saturated([s.processed_fps for s in steps]))


def run_bench(options: BenchOptions, say: Say, stop: threading.Event | None = None) -> BenchReport:
    started_ns = time.monotonic_ns()
    stop = stop or threading.Event()
    why = mosquitto_unavailable()
    if why:
        raise RuntimeError(f"cannot start a broker: {why}")
    manifest = Manifest.load(manifest_path_for(options.model))
    clips = bench_clips(options.videos)
    clip = clips[0]
    settings = DetectorSettings(conf_threshold=options.confidence, iou_threshold=options.iou,
                                max_batch=options.max_batch, rect=True)
    skipped = ultra.ultralytics_unavailable() if options.ultralytics else "--no-ultralytics"
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edge-agent-bench-")))
        broker = stack.enter_context(MosquittoServer())
        say(f"bound: each stage alone on {clip.path.name} ({clip.describe()}), {cores()} cores ...")
        wait_for_quiet(options.quiet_wait_s, stop)

        def measure_bound() -> bound_mod.BoundResult:
            cpu_start = CpuSample.take(child_pids())
            result = bound_mod.measure(options.model, clip.path, (clip.height, clip.width), settings=settings,
                                       cores=cores(), broker=(broker.host, broker.port), effort=options.effort)
            result.notes["other_cpu_percent"] = CpuUse.between(cpu_start, CpuSample.take(child_pids())).other_percent
            return result

        bound = search.retry_when_noisy(
            measure_bound, lambda b: b.notes["other_cpu_percent"], limit=NOISY_OTHER_PERCENT,
            wait_quiet=lambda: wait_for_quiet(options.quiet_wait_s, stop), attempts=options.attempts,
            on_noise=lambda b: say(f"bound: other processes used {b.notes['other_cpu_percent']:.0f}% of a core "
                                   "meanwhile; measuring again"))
        bound_other = bound.notes["other_cpu_percent"]
        say(f"bound: {bound.bound_fps:.1f} frames/s; model alone {bound.model_fps:.1f} images/s"
            + (f" (other processes used {bound_other:.0f}% of a core meanwhile)" if bound_other else ""))
        farm = stack.enter_context(CameraFarm(clips, options.max_cameras))
        counts = search.camera_counts(options.start_cameras, options.step, options.max_cameras)
        sweep = _PipelineSweep(options, farm, (broker.host, broker.port), say, stop)
        search.sweep(sweep.run, counts, sweep.done)
        for _ in range(0 if options.quick else REFINE_STEPS):
            n = search.refine_count({c: s.processed_fps for c, s in sweep.steps.items()})
            if n is None:
                break
            sweep.run(n)
        while not options.quick and (n := paced.next_count(sweep.sustained())) is not None:
            sweep.run(n)
        ordered = sorted(sweep.steps.values(), key=lambda s: s.cameras)
        saturated = ordered[search.best([s.processed_fps for s in ordered])]
        sweep.run(paced.half_load_cameras(saturated.processed_fps, farm.fps))
        ultra_steps: list[ultra.UltralyticsStep] = []
        if skipped is None:
            ultra_steps = _ultralytics_sweep(options, farm, counts, input_side=max(manifest.input_size), say=say,
                                             workdir=workdir, stop=stop)
    return BenchReport(
        options=options, machine=describe_machine(),
        model_label=f"{manifest.name}@{manifest.version} ({manifest.sha256[:12]})", clip=clip, clips=len(clips),
        bound=bound, pipeline=sorted(sweep.steps.values(), key=lambda s: s.cameras), checks=sweep.checks,
        ultralytics=ultra_steps, ultralytics_skipped=skipped,
        duration_s=(time.monotonic_ns() - started_ns) / 1e9,
    )
