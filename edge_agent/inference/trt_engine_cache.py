"""TensorRT engine cache: which engine fits this box, where it lives, and why a cached one does not fit.

An engine is tied to everything it was built from and for: the exact ONNX bytes (sha256 of the
precision variant), the TensorRT version, the GPU model and its compute capability, the precision,
the batch profile and the input size. All of them form the cache key; the file name carries a
digest of the key and a JSON metadata file beside the engine repeats every field in clear, with
the engine's own sha256, so that

- a lookup finds the engine for exactly this key, or explains, field by field, why each cached
  engine of the same model does not fit (other TensorRT, other GPU, other profile, ...);
- a truncated or altered engine file is detected before TensorRT deserialises it.

Nothing here imports TensorRT or CUDA: it is pure logic, tested on any machine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from edge_agent.manifest import sha256_file

log = logging.getLogger(__name__)

Precision = Literal["fp32", "fp16", "int8"]
CACHE_SCHEMA = 1
STRIDE = 32
# Fields that decide whether an engine fits, in the order a mismatch is reported.
_KEY_FIELDS = ("onnx_sha256", "precision", "tensorrt_version", "gpu_name", "compute_capability",
               "min_batch", "opt_batch", "max_batch", "min_hw", "max_hw")


class EngineCacheError(RuntimeError):
    """A cached engine that cannot be used, with the reasons."""


@dataclass(frozen=True, slots=True)
class ProfileShapes:
    """One TensorRT optimisation profile for an input [N, 3, H, W]."""

    min: tuple[int, int, int, int]
    opt: tuple[int, int, int, int]
    max: tuple[int, int, int, int]

    def admits(self, shape: tuple[int, ...]) -> bool:
        """Whether an input of `shape` lies inside the profile (every dimension between min and max)."""
        return len(shape) == len(self.max) and all(
            lo <= d <= hi for lo, d, hi in zip(self.min, shape, self.max, strict=True))

    @property
    def fixed_hw(self) -> tuple[int, int] | None:
        """(H, W) when the profile allows one input size only."""
        if self.min[2:] == self.max[2:]:
            return self.max[2], self.max[3]
        return None


def profile_shapes(max_batch: int, input_hw: tuple[int, int], *, opt_batch: int | None = None,
                   min_hw: tuple[int, int] | None = None) -> ProfileShapes:
    """Profile from the batcher's max batch and the model's input size.

    `opt_batch` (the batch TensorRT tunes its kernels for) defaults to `max_batch`: under load the
    batcher fills batches, and an idle box is not the one that needs speed. `min_hw` allows
    smaller rectangles (the detector's `rect` mode) down to that size; by default the input is
    square and fixed, which gives TensorRT the most room to optimise.
    """
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    opt = max_batch if opt_batch is None else opt_batch
    if not 1 <= opt <= max_batch:
        raise ValueError(f"opt_batch must be between 1 and max_batch ({max_batch}), got {opt}")
    low = min_hw or input_hw
    for name, (h, w) in (("input size", input_hw), ("minimum input size", low)):
        if h <= 0 or w <= 0 or h % STRIDE or w % STRIDE:
            raise ValueError(f"{name} {h}x{w} must be positive multiples of {STRIDE}")
    if low[0] > input_hw[0] or low[1] > input_hw[1]:
        raise ValueError(f"minimum input size {low} is larger than the input size {input_hw}")
    return ProfileShapes((1, 3, *low), (opt, 3, *input_hw), (max_batch, 3, *input_hw))


@dataclass(frozen=True, slots=True)
class EngineKey:
    """Everything an engine depends on. Equal keys mean interchangeable engines."""

    onnx_sha256: str
    precision: Precision
    tensorrt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]
    min_batch: int
    opt_batch: int
    max_batch: int
    min_hw: tuple[int, int]
    max_hw: tuple[int, int]

    @classmethod
    def create(cls, *, onnx_sha256: str, precision: Precision, tensorrt_version: str, gpu_name: str,
               compute_capability: tuple[int, int], shapes: ProfileShapes) -> EngineKey:
        return cls(onnx_sha256, precision, tensorrt_version, gpu_name, compute_capability,
                   shapes.min[0], shapes.opt[0], shapes.max[0], shapes.min[2:], shapes.max[2:])

    @property
    def shapes(self) -> ProfileShapes:
        return ProfileShapes((self.min_batch, 3, *self.min_hw), (self.opt_batch, 3, *self.max_hw),
                             (self.max_batch, 3, *self.max_hw))

    def fields(self) -> dict[str, Any]:
        """JSON-ready fields (tuples as lists, as they come back from a metadata file)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.fields(), sort_keys=True).encode()).hexdigest()

    def file_name(self, model_name: str) -> str:
        """`demo-parts.int8.<16 hex>.engine`: readable, unique per key."""
        return f"{model_name}.{self.precision}.{self.digest()[:16]}.engine"


def mismatches(expected: EngineKey, found: dict[str, Any]) -> list[str]:
    """Why an engine described by metadata `found` is not one for `expected` (empty if it is)."""
    want = expected.fields()
    reasons = []
    for name in _KEY_FIELDS:
        have = found.get(name)
        if have != want[name]:
            reasons.append(f"{name.replace('_', ' ')}: engine has {_show(name, have)}, "
                           f"this box needs {_show(name, want[name])}")
    return reasons


def _show(name: str, value: Any) -> str:
    if value is None:
        return "missing"
    if isinstance(value, list):
        return ("." if name == "compute_capability" else "x").join(str(v) for v in value)
    if name == "onnx_sha256":
        return str(value)[:12]
    return str(value)


@dataclass(frozen=True)
class Lookup:
    """A cache hit (`path` set) or a miss with the reasons each near candidate was passed over."""

    path: Path | None
    reasons: tuple[str, ...] = ()

    @property
    def hit(self) -> bool:
        return self.path is not None


class EngineCache:
    """Engines and their metadata in one folder (by default `engines/` beside the model)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @staticmethod
    def metadata_path(engine_path: Path) -> Path:
        return engine_path.with_suffix(".json")

    def path_for(self, key: EngineKey, model_name: str) -> Path:
        return self.root / key.file_name(model_name)

    def lookup(self, key: EngineKey, model_name: str) -> Lookup:
        """The engine for `key`, verified against its metadata; else why none fits."""
        path = self.path_for(key, model_name)
        if path.is_file():
            problem = self._verify(path, key)
            if problem is None:
                return Lookup(path)
            return Lookup(None, (f"{path.name}: {problem}",))
        reasons = []
        for meta_path in sorted(self.root.glob(f"{model_name}.*.json")):
            meta = self._read_metadata(meta_path)
            if meta is None or meta.get("model_name") != model_name:
                continue
            why = mismatches(key, meta)
            if why:
                reasons.append(f"{meta_path.with_suffix('.engine').name}: " + "; ".join(why))
        if not reasons:
            reasons.append(f"no engine for {model_name} ({key.precision}) in {self.root}")
        return Lookup(None, tuple(reasons))

    def _verify(self, path: Path, key: EngineKey) -> str | None:
        meta = self._read_metadata(self.metadata_path(path))
        if meta is None:
            return "metadata file missing or unreadable"
        if meta.get("schema") != CACHE_SCHEMA:
            return f"metadata schema {meta.get('schema')}, this build reads {CACHE_SCHEMA}"
        why = mismatches(key, meta)
        if why:
            return "; ".join(why)
        if meta.get("engine_size_bytes") != path.stat().st_size:
            return f"engine is {path.stat().st_size} bytes, metadata says {meta.get('engine_size_bytes')}"
        if meta.get("engine_sha256") != sha256_file(path):
            return "engine sha256 differs from its metadata (a partial or altered file)"
        return None

    @staticmethod
    def _read_metadata(path: Path) -> dict[str, Any] | None:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def store(self, key: EngineKey, model_name: str, engine: bytes, **extra: Any) -> Path:
        """Write engine and metadata atomically (temp file + rename; metadata last, so an engine
        without metadata is never mistaken for a complete one)."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.path_for(key, model_name)
        meta = {
            "schema": CACHE_SCHEMA, "model_name": model_name, **key.fields(),
            "engine_sha256": hashlib.sha256(engine).hexdigest(), "engine_size_bytes": len(engine),
            "created": datetime.now(UTC).isoformat(timespec="seconds"), **extra,
        }
        _atomic_write(path, engine)
        _atomic_write(self.metadata_path(path), (json.dumps(meta, indent=2) + "\n").encode())
        log.info("engine cached: %s", path)
        return path

    def remove(self, key: EngineKey, model_name: str) -> None:
        path = self.path_for(key, model_name)
        for p in (self.metadata_path(path), path):
            p.unlink(missing_ok=True)

    def timing_cache_path(self, key: EngineKey) -> Path:
        """Timing caches are per TensorRT version and GPU, shared by every model and precision."""
        gpu = "".join(c if c.isalnum() else "-" for c in key.gpu_name).strip("-").lower()
        sm = "".join(str(v) for v in key.compute_capability)
        return self.root / f"timing-trt{key.tensorrt_version}-{gpu}-sm{sm}.cache"


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


BuildPolicy = Literal["if-missing", "never", "always"]
# build(timing_cache_bytes) -> (serialized engine, updated timing cache); the TensorRT boundary.
BuildFn = Callable[[bytes], tuple[bytes, bytes]]


def ensure_engine(cache: EngineCache, key: EngineKey, model_name: str, *, policy: BuildPolicy,
                  build: BuildFn, describe: str = "") -> tuple[Path, bool]:
    """The engine for `key`: from the cache, or built now (policy permitting). Returns (path, built).

    `never` is for boxes that must not spend minutes building on their first frame: a missing or
    mismatched engine is then an error that lists why each cached engine did not fit and how to
    pre-build one. `always` rebuilds even over a valid cached engine (`model build --force`).
    """
    found = cache.lookup(key, model_name)
    if found.path is not None and policy != "always":
        return found.path, False
    what = describe or f"{model_name} ({key.precision})"
    if policy == "never":
        raise EngineCacheError(
            f"no usable TensorRT engine for {what} in {cache.root}: " + " | ".join(found.reasons)
            + f"; pre-build it with `edge-agent model build` for batch {key.min_batch}-{key.max_batch} "
            f"at {key.max_hw[0]}x{key.max_hw[1]} on this GPU")
    if not found.hit:
        log.warning("building a TensorRT engine for %s, which takes minutes (%s); `edge-agent model build` "
                    "does this ahead of time", what, " | ".join(found.reasons))
    timing_path = cache.timing_cache_path(key)
    timing = timing_path.read_bytes() if timing_path.is_file() else b""
    started = time.monotonic()
    engine, new_timing = build(timing)
    build_s = time.monotonic() - started
    path = cache.store(key, model_name, engine, build_s=round(build_s, 1))
    if new_timing:
        _atomic_write(timing_path, new_timing)
    return path, True


def ort_tensorrt_provider_options(shapes: ProfileShapes, cache_dir: Path, input_name: str,
                                  device_id: int = 0) -> dict[str, str]:
    """Options for ONNX Runtime's TensorrtExecutionProvider (onnxruntime-gpu): an explicit profile
    (otherwise ORT rebuilds its engine whenever a larger shape shows up), its engine and timing
    caches in `cache_dir` (ORT keys its own engine files), precision from the ONNX variant as with
    our own builder."""
    def dims(shape: tuple[int, ...]) -> str:
        return f"{input_name}:" + "x".join(str(d) for d in shape)

    return {
        "device_id": str(device_id),
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache_dir / "ort-trt"),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(cache_dir / "ort-trt"),
        "trt_profile_min_shapes": dims(shapes.min),
        "trt_profile_opt_shapes": dims(shapes.opt),
        "trt_profile_max_shapes": dims(shapes.max),
    }
