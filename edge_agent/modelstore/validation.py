"""Checks a candidate version passes before it may replace the active model, independent of the daemon.

Steps, in order; the first that fails ends the run and its reason is the candidate's rejection:

1. integrity     the signature (when the node has trusted keys) and the blob's size and sha256
2. load          the configured backend loads it and runs warm-up batches
3. compatibility one [N, 3, H, W] input with a dynamic batch, an output of 4 + len(class_names)
                 channels, and the active model's class names unless the manifest declares
                 `class_change: true`
4. calibration   the calibration images give the detections the manifest records
5. latency       median batch-1 latency at most `latency_factor` x the active model's

The latency of both models is measured interleaved, in the same window, so that a node busy with
cameras slows both alike instead of failing the candidate for load that is not its fault. The
measurement is injectable (`LatencyProbe`) so that tests can decide it.
"""

from __future__ import annotations

import hashlib
import logging
import re
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.inference.calibration import check_calibration
from edge_agent.inference.detector import Detector, DetectorSettings, model_input_size
from edge_agent.inference.loading import LoadedModel
from edge_agent.inference.runner import Backend, Runner, load_runner
from edge_agent.modelstore.signing import SignatureError, TrustedKeys
from edge_agent.modelstore.store import StoredModel, StoreError, declares_class_change, verify_blob

log = logging.getLogger(__name__)

# (candidate runner, its input hw, active runner, its input hw) -> (candidate ms, active ms)
LatencyProbe = Callable[[Runner, tuple[int, int], Runner, tuple[int, int]], tuple[float, float]]
_PLAIN_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class StepFailedError(Exception):
    """Raised inside a step with the reason the candidate is rejected."""


@dataclass(frozen=True)
class StepResult:
    step: str
    ok: bool
    reason: str
    duration_ms: float


@dataclass
class ValidationReport:
    sha256: str
    label: str
    steps: list[StepResult] = field(default_factory=list)
    model: LoadedModel | None = None  # the loaded candidate, when it passed and was asked for

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(s.ok for s in self.steps)

    @property
    def failed(self) -> StepResult | None:
        return next((s for s in self.steps if not s.ok), None)

    @property
    def reason(self) -> str:
        failed = self.failed
        return "passed" if failed is None else f"{failed.step}: {failed.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "model": self.label, "ok": self.ok, "reason": self.reason,
                "steps": [{"step": s.step, "ok": s.ok, "reason": s.reason,
                           "duration_ms": round(s.duration_ms, 1)} for s in self.steps]}


@dataclass(frozen=True)
class ValidationSettings:
    backend: Backend = "onnxruntime"
    runner_options: Mapping[str, Any] = field(default_factory=dict)
    detector: DetectorSettings = field(default_factory=DetectorSettings)  # for the returned model
    latency_factor: float = 1.5
    latency_runs: int = 10


def interleaved_latency(runs: int) -> LatencyProbe:
    """The default probe: median of `runs` batch-1 runs of each model, alternating between them."""
    def probe(candidate: Runner, candidate_hw: tuple[int, int],
              active: Runner, active_hw: tuple[int, int]) -> tuple[float, float]:
        inputs = (np.full((1, 3, *candidate_hw), 0.5, np.float32), np.full((1, 3, *active_hw), 0.5, np.float32))
        times: tuple[list[float], list[float]] = ([], [])
        for _ in range(runs):
            for runner, batch, out in zip((candidate, active), inputs, times, strict=True):
                start = time.perf_counter()
                runner.infer(batch)
                out.append((time.perf_counter() - start) * 1000)
        return statistics.median(times[0]), statistics.median(times[1])
    return probe


class _Candidate:
    """The candidate under test: holds what a step produced for the next ones."""

    def __init__(self, stored: StoredModel, settings: ValidationSettings) -> None:
        self.stored = stored
        self.settings = settings
        self.runner: Runner | None = None
        self.input_hw = (0, 0)
        self.dynamic_hw = False

    def load(self) -> str:
        runner = load_runner(self.stored.blob, self.settings.backend, **self.settings.runner_options)
        self.runner = runner
        self.input_hw, self.dynamic_hw = model_input_size(runner, self.stored.manifest.input_size)
        runner.warmup(1, *self.input_hw)
        return f"{self.settings.backend}, input {self.input_hw[0]}x{self.input_hw[1]}"

    def detector(self, settings: DetectorSettings) -> Detector:
        assert self.runner is not None
        return Detector(self.runner, self.stored.manifest.class_names, input_hw=self.input_hw,
                        dynamic_hw=self.dynamic_hw, settings=settings)


def _integrity(stored: StoredModel, trusted_keys: TrustedKeys | None) -> str:
    manifest = stored.manifest
    if stored.blob.name != manifest.sha256:
        raise StepFailedError(f"blob {stored.blob.name[:12]} is not the manifest's {manifest.sha256[:12]}")
    try:
        verify_blob(stored.blob, manifest.size_bytes, manifest.sha256)
    except (OSError, StoreError) as exc:
        raise StepFailedError(str(exc)) from exc
    if trusted_keys is None:
        return "size and sha256 match; signature not checked (no trusted keys configured)"
    try:
        key = trusted_keys.verify(stored.signed)
    except SignatureError as exc:
        raise StepFailedError(str(exc)) from exc
    return f"size and sha256 match; signed by {key}"


def _compatibility(cand: _Candidate, active: StoredModel | None, max_batch: int) -> str:
    assert cand.runner is not None
    manifest, notes = cand.stored.manifest, []
    batch_dim = cand.runner.inputs[0].shape[0]
    if batch_dim is not None and not (batch_dim == max_batch == 1):
        raise StepFailedError(f"input batch dimension is fixed at {batch_dim}; the daemon batches 1..{max_batch}")
    if not cand.dynamic_hw and cand.input_hw != tuple(manifest.input_size):
        raise StepFailedError(f"model input is {cand.input_hw}, manifest says {tuple(manifest.input_size)}")
    head = cand.runner.infer(np.full((1, 3, *cand.input_hw), 0.5, np.float32))
    channels = 4 + len(manifest.class_names)
    if head.ndim != 3 or head.shape[0] != 1 or head.shape[1] != channels:
        raise StepFailedError(f"output shape {head.shape}, expected [1, {channels}, anchors] for "
                              f"{len(manifest.class_names)} classes")
    if active is not None:
        old, new = active.manifest.class_names, manifest.class_names
        if old != new:
            if not declares_class_change(cand.stored.signed):
                raise StepFailedError(f"class names {list(new)} differ from the active model's {list(old)}; "
                                      "a version that changes classes must declare class_change: true")
            notes.append(f"declared class change {list(old)} -> {list(new)}")
        if tuple(active.manifest.input_size) != tuple(manifest.input_size):
            notes.append(f"input size changes {tuple(active.manifest.input_size)} -> "
                         f"{tuple(manifest.input_size)}")
    return "; ".join(notes) or "same inputs, outputs and classes"


def _calibration(cand: _Candidate, calibration_dir: Path) -> str:
    calib = cand.stored.manifest.calibration
    images = calib.get("images") or []
    if not images:
        raise StepFailedError("the manifest records no calibration images")
    for entry in images:
        name = str(entry.get("file", ""))
        if not _PLAIN_FILE.fullmatch(name):
            raise StepFailedError(f"calibration file name {name[:80]!r} is not a plain file name")
        expected_sha = entry.get("sha256")
        path = calibration_dir / name
        if expected_sha is not None and path.is_file() and \
                hashlib.sha256(path.read_bytes()).hexdigest() != expected_sha:
            raise StepFailedError(f"calibration image {name} in {calibration_dir} is not the one recorded")
    settings = DetectorSettings(conf_threshold=float(calib.get("conf", 0.25)),
                                iou_threshold=float(calib.get("iou", 0.7)), max_batch=1,
                                rect=bool(calib.get("rect", False)))
    report = check_calibration(cand.detector(settings), calib, calibration_dir)
    if not report.ok:
        shown = "; ".join(report.problems[:5])
        more = f" (+{len(report.problems) - 5} more)" if len(report.problems) > 5 else ""
        raise StepFailedError(f"{len(report.problems)} problem(s) on {report.images} image(s): {shown}{more}")
    return f"{report.images} image(s), {report.expected} expected detection(s) reproduced"


def _latency(cand: _Candidate, active: StoredModel | None, settings: ValidationSettings,
             probe: LatencyProbe | None) -> str:
    if active is None:
        return "no active model to compare with"
    assert cand.runner is not None
    runner = load_runner(active.blob, settings.backend, **settings.runner_options)
    try:
        active_hw, _ = model_input_size(runner, active.manifest.input_size)
        runner.warmup(1, *active_hw)
        measure = probe or interleaved_latency(settings.latency_runs)
        cand_ms, active_ms = measure(cand.runner, cand.input_hw, runner, active_hw)
    finally:
        runner.close()
    limit_ms = settings.latency_factor * active_ms
    verdict = f"{cand_ms:.2f} ms vs active {active_ms:.2f} ms (limit {limit_ms:.2f} ms)"
    if cand_ms > limit_ms:
        raise StepFailedError(f"too slow: {verdict}")
    return verdict


def validate_candidate(candidate: StoredModel, *, trusted_keys: TrustedKeys | None, calibration_dir: Path,
                       active: StoredModel | None, settings: ValidationSettings | None = None,
                       latency_probe: LatencyProbe | None = None, keep_loaded: bool = False) -> ValidationReport:
    """Run the steps on `candidate`; with `keep_loaded`, a passing candidate comes back loaded.

    `active` is the version now running (None on a node with none); it is loaded a second time,
    briefly, for the latency comparison. Nothing here touches the running model.
    """
    settings = settings or ValidationSettings()
    report = ValidationReport(candidate.sha256, candidate.label)
    cand = _Candidate(candidate, settings)
    steps: list[tuple[str, Callable[[], str]]] = [
        ("integrity", lambda: _integrity(candidate, trusted_keys)),
        ("load", cand.load),
        ("compatibility", lambda: _compatibility(cand, active, settings.detector.max_batch)),
        ("calibration", lambda: _calibration(cand, calibration_dir)),
        ("latency", lambda: _latency(cand, active, settings, latency_probe)),
    ]
    try:
        for result in _run_steps(steps):
            report.steps.append(result)
            log.log(logging.INFO if result.ok else logging.WARNING, "validate %s: %s %s: %s", candidate.label,
                    result.step, "ok" if result.ok else "FAILED", result.reason)
        if report.ok and keep_loaded:
            report.model = LoadedModel(candidate.manifest, cand.detector(settings.detector))
    finally:
        if report.model is None and cand.runner is not None:
            cand.runner.close()
    return report


def _run_steps(steps: list[tuple[str, Callable[[], str]]]) -> Iterator[StepResult]:
    for name, step in steps:
        start = time.monotonic()
        try:
            reason, ok = step(), True
        except StepFailedError as exc:
            reason, ok = str(exc), False
        except Exception as exc:  # noqa: BLE001 - a backend's own errors reject the candidate, not the node
            reason, ok = f"{type(exc).__name__}: {exc}", False
        yield StepResult(name, ok, reason, (time.monotonic() - start) * 1000)
        if not ok:
            return
