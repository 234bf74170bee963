"""TensorRT backend: one code path for TensorRT 10 (Jetson, older boxes) and 11.

The precision is the ONNX variant's own (`edge-agent model precision` makes FP16 and Q/DQ INT8
files): the network is always built strongly typed, which TensorRT 11 requires and TensorRT 10
supports, so no precision builder flag (removed in 11) and no calibrator (removed in 11) is ever
used. Engines come from the engine cache (`trt_engine_cache`), built with one optimisation
profile (batch 1..max_batch, tuned for `opt_batch`) and a timing cache shared per GPU and
TensorRT version.

At run time: named I/O tensors bound once to preallocated device buffers sized for the largest
profile shape (a batch of n uses their leading part, so addresses never change),
`set_input_shape` per batch size, `execute_async_v3` on this runner's own CUDA stream, pinned
host memory for both copies. `infer` takes the protocol's float32 batch; `infer_frames` takes
uint8 frames and letterboxes them on the GPU. NMS stays on the host (`yolo_decode`): the head
output is [N, 4 + C, A] (67 KB per 320x320 image), and copying it is cheaper than a device NMS
launch per image; `tests/gpu/test_tensorrt_gpu.py` measures both on the box.

TensorRT and torch (CUDA) are imported only when a runner is created, so CPU boxes never import
them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, cast, get_args

import numpy as np

from edge_agent.inference.dispatch import Dispatcher, open_per_device
from edge_agent.inference.letterbox import Letterbox
from edge_agent.inference.runner import RunnerError, TensorSpec
from edge_agent.inference.trt_engine_cache import (
    BuildPolicy,
    EngineCache,
    EngineCacheError,
    EngineKey,
    Precision,
    ProfileShapes,
    ensure_engine,
    profile_shapes,
)
from edge_agent.manifest import Manifest, ManifestError, manifest_path_for, sha256_file

log = logging.getLogger(__name__)

DEFAULT_WORKSPACE_MIB = 1024


def tensorrt_missing() -> str | None:
    """Why the TensorRT backend cannot run here, or None when it can."""
    try:
        import tensorrt  # noqa: F401
    except ImportError as exc:
        return f"tensorrt is not installed ({exc}); install the `gpu` extra on a box that reaches NVIDIA's index"
    try:
        import torch
    except ImportError as exc:
        return f"torch is not installed ({exc}); the TensorRT runner uses torch CUDA tensors"
    if not torch.cuda.is_available():
        return "torch reports no CUDA device (no NVIDIA driver, no GPU, or a CPU-only torch build)"
    return None


def _import_tensorrt() -> Any:
    missing = tensorrt_missing()
    if missing:
        raise RunnerError(f"tensorrt backend unavailable: {missing}")
    import tensorrt as trt

    return trt


@dataclass(frozen=True, slots=True)
class GpuIdentity:
    index: int
    name: str
    compute_capability: tuple[int, int]
    total_memory_bytes: int


def gpu_identity(index: int) -> GpuIdentity:
    import torch

    if index >= torch.cuda.device_count():
        raise RunnerError(f"GPU {index} does not exist; this box has {torch.cuda.device_count()}")
    props = torch.cuda.get_device_properties(index)
    return GpuIdentity(index, props.name, (props.major, props.minor), props.total_memory)


@dataclass(frozen=True)
class TensorRTSettings:
    device: int = 0
    max_batch: int = 8
    opt_batch: int | None = None
    min_hw: tuple[int, int] | None = None  # allow smaller (rect) inputs down to this size
    cache_dir: Path | None = None  # default: `engines/` beside the model
    workspace_mib: int = DEFAULT_WORKSPACE_MIB
    build: BuildPolicy = "if-missing"


def variant_precision(manifest: Manifest) -> Precision:
    """The precision a model file carries: variants say so in their manifest; plain models are fp32."""
    precision = manifest.training.get("precision", "fp32")
    if precision not in get_args(Precision):
        raise RunnerError(f"manifest of {manifest.name} names precision {precision!r}; "
                          f"known: {', '.join(get_args(Precision))}")
    return cast("Precision", precision)


def engine_key(onnx_path: Path, manifest: Manifest, settings: TensorRTSettings, *, tensorrt_version: str,
               gpu: GpuIdentity) -> EngineKey:
    shapes = profile_shapes(settings.max_batch, manifest.input_size, opt_batch=settings.opt_batch,
                            min_hw=settings.min_hw)
    return EngineKey.create(onnx_sha256=sha256_file(onnx_path), precision=variant_precision(manifest),
                            tensorrt_version=tensorrt_version, gpu_name=gpu.name,
                            compute_capability=gpu.compute_capability, shapes=shapes)


def build_engine(trt: Any, onnx_path: Path, shapes: ProfileShapes, *, workspace_mib: int,
                 timing_cache: bytes) -> tuple[bytes, bytes]:
    """Serialized engine and updated timing cache for `onnx_path` (strongly typed, one profile)."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # Strongly typed: the ONNX types decide every layer's precision. TensorRT 11 always builds
    # this way and keeps the flag for compatibility; EXPLICIT_BATCH is gone (10 ignores it, 11 lacks it).
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    flags = 0 if strongly_typed is None else 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RunnerError(f"TensorRT cannot parse {onnx_path}: {errors}")
    if network.num_inputs != 1:
        raise RunnerError(f"{onnx_path}: expected one input, the network has {network.num_inputs}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    profile = builder.create_optimization_profile()
    profile.set_shape(network.get_input(0).name, shapes.min, shapes.opt, shapes.max)
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing_cache)
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RunnerError(f"TensorRT could not build an engine from {onnx_path} (see its log above)")
    return bytes(memoryview(plan)), bytes(memoryview(config.get_timing_cache().serialize()))


def prepare_engine(onnx_path: Path, settings: TensorRTSettings) -> tuple[Path, EngineKey, bool]:
    """The cached engine for this model, GPU and profile, built first if the policy allows."""
    trt = _import_tensorrt()
    try:
        manifest = Manifest.load(manifest_path_for(onnx_path))
    except ManifestError as exc:
        raise RunnerError(f"the TensorRT backend needs the model's manifest: {exc}") from exc
    gpu = gpu_identity(settings.device)
    key = engine_key(onnx_path, manifest, settings, tensorrt_version=trt.__version__, gpu=gpu)
    cache = EngineCache(settings.cache_dir or onnx_path.parent / "engines")

    def build(timing: bytes) -> tuple[bytes, bytes]:
        import torch

        with torch.cuda.device(settings.device):
            return build_engine(trt, onnx_path, key.shapes, workspace_mib=settings.workspace_mib,
                                timing_cache=timing)

    try:
        path, built = ensure_engine(cache, key, manifest.name, policy=settings.build, build=build,
                                    describe=f"{onnx_path.name} on GPU {gpu.index} ({gpu.name})")
    except EngineCacheError as exc:
        raise RunnerError(str(exc)) from exc
    return path, key, built


def _settings(options: dict[str, Any]) -> TensorRTSettings:
    # `threads` is the CPU option every backend is handed by the daemon; it means nothing here.
    unknown = set(options) - {f.name for f in fields(TensorRTSettings)} - {"threads"}
    if unknown:
        raise RunnerError(f"unknown tensorrt runner options: {sorted(unknown)}")
    return TensorRTSettings(**{k: v for k, v in options.items() if k != "threads"})


class TensorRTRunner:
    """One engine on one GPU, with its own stream and buffers; `infer` is called from one thread."""

    def __init__(self, path: Path, **options: Any) -> None:
        self.settings = _settings(options)
        self._trt = trt = _import_tensorrt()  # checks torch and CUDA too
        import torch

        from edge_agent.inference.gpu_preprocess import GpuLetterbox

        self.engine_path, self.key, self.built = prepare_engine(path, self.settings)
        self.model_sha256 = self.key.onnx_sha256
        self.device = torch.device("cuda", self.settings.device)
        self.device_name = self.key.gpu_name
        with torch.cuda.device(self.device):
            self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            self._engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
            if self._engine is None:
                raise RunnerError(f"TensorRT {trt.__version__} cannot deserialize {self.engine_path}")
            self._context = self._engine.create_execution_context()
            self._stream = torch.cuda.Stream(self.device)  # type: ignore[no-untyped-call]  # unannotated in torch
            self._bind(torch)
        self._letterbox = GpuLetterbox(self.settings.max_batch, self.device)
        log.info("tensorrt %s engine %s on cuda:%d (%s), %s, batch %d-%d, device memory %.0f MiB",
                 trt.__version__, self.engine_path.name, self.settings.device, self.device_name,
                 self.key.precision, self.key.min_batch, self.key.max_batch, self.device_memory_bytes / 2**20)

    def _bind(self, torch: Any) -> None:
        trt, engine = self._trt, self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise RunnerError(f"{self.engine_path}: expected one input and one output, got {inputs} and {outputs}")
        self._in_name, self._out_name = inputs[0], outputs[0]
        shapes = self.key.shapes
        if not self._context.set_input_shape(self._in_name, shapes.max):
            raise RunnerError(f"engine rejects its own profile's largest input {shapes.max}")
        out_max = tuple(self._context.get_tensor_shape(self._out_name))

        def torch_dtype(name: str) -> Any:
            return torch.from_numpy(np.empty(0, trt.nptype(engine.get_tensor_dtype(name)))).dtype

        in_dtype, out_dtype = torch_dtype(self._in_name), torch_dtype(self._out_name)
        self._in_dev = torch.empty(shapes.max, dtype=in_dtype, device=self.device)
        self._out_dev = torch.empty(out_max, dtype=out_dtype, device=self.device)
        # The protocol speaks float32 on the host; a float16-I/O engine converts on the device copy.
        self._in_host = torch.empty(shapes.max, dtype=torch.float32, pin_memory=True)
        self._out_host = torch.empty(out_max, dtype=torch.float32, pin_memory=True)
        self._context.set_tensor_address(self._in_name, self._in_dev.data_ptr())
        self._context.set_tensor_address(self._out_name, self._out_dev.data_ptr())
        fixed = shapes.fixed_hw
        self._inputs = (TensorSpec(self._in_name, (None, 3, *(fixed or (None, None))), "float32"),)
        self._outputs = (TensorSpec(self._out_name, (None, int(out_max[1]), None if fixed is None else
                                                     int(out_max[2])), "float32"),)
        self._current_shape: tuple[int, ...] = shapes.max

    @property
    def device_memory_bytes(self) -> int:
        # TensorRT 11 removed device_memory_size; 10.x has both.
        size = getattr(self._engine, "device_memory_size_v2", None)
        return int(size if size is not None else self._engine.device_memory_size)

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._outputs

    def _check_shape(self, shape: tuple[int, ...]) -> None:
        shapes = self.key.shapes
        if not shapes.admits(shape):
            raise RunnerError(f"batch shape {shape} is outside the engine's profile {shapes.min}..{shapes.max}; "
                              f"rebuild with a larger max batch or min_hw")

    def _run(self, shape: tuple[int, ...]) -> Any:
        """Execute on the stream for an input of `shape` already in the device buffer; returns the
        device output view (the caller synchronises)."""
        if shape != self._current_shape:
            if not self._context.set_input_shape(self._in_name, shape):
                raise RunnerError(f"TensorRT rejected input shape {shape}")
            self._current_shape = shape
        if not self._context.execute_async_v3(self._stream.cuda_stream):
            raise RunnerError(f"TensorRT execution failed for a batch of shape {shape}")
        out_shape = tuple(self._context.get_tensor_shape(self._out_name))
        return self._out_dev.view(-1)[: int(np.prod(out_shape))].view(out_shape)

    def _download(self, out_dev: Any) -> np.ndarray:
        host = self._out_host.view(-1)[: out_dev.numel()].view(out_dev.shape)
        host.copy_(out_dev, non_blocking=True)
        self._stream.synchronize()
        # A copy: the pinned buffer is overwritten by the next batch while results may still be in use.
        return np.array(host.numpy(), copy=True)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        import torch

        shape = tuple(int(d) for d in batch.shape)
        self._check_shape(shape)
        with torch.cuda.device(self.device), torch.cuda.stream(self._stream):
            host = self._in_host.view(-1)[: batch.size].view(shape)
            np.copyto(host.numpy(), batch, casting="same_kind")
            dev = self._in_dev.view(-1)[: batch.size].view(shape)
            dev.copy_(host, non_blocking=True)
            return self._download(self._run(shape))

    def infer_frames(self, images: Sequence[np.ndarray], letterboxes: Sequence[Letterbox], *,
                     bgr: bool = True) -> np.ndarray:
        """Head output for uint8 frames (full or already scaled), letterboxed on the GPU."""
        import torch

        hw = (letterboxes[0].dst_h, letterboxes[0].dst_w)
        shape = (len(images), 3, *hw)
        self._check_shape(shape)
        with torch.cuda.device(self.device), torch.cuda.stream(self._stream):
            dev = self._in_dev.view(-1)[: int(np.prod(shape))].view(shape)
            self._letterbox(images, letterboxes, dev, bgr=bgr)
            return self._download(self._run(shape))

    def warmup(self, batch_size: int, height: int, width: int) -> None:
        dummy = np.full((batch_size, 3, height, width), 114 / 255, dtype=np.float32)
        for _ in range(2):
            self.infer(dummy)
        if batch_size != self.key.max_batch:  # the largest shape, so no first-use cost remains there either
            self.infer(np.full((self.key.max_batch, 3, height, width), 114 / 255, dtype=np.float32))

    def close(self) -> None:
        self._stream.synchronize()
        # Context before engine before runtime: TensorRT objects must go in reverse creation order.
        del self._context
        del self._engine
        del self._runtime
        del self._in_dev, self._out_dev, self._in_host, self._out_host


def open_tensorrt(path: Path, *, devices: Sequence[int] = (0,), **options: Any) -> Dispatcher:
    """One TensorRTRunner per GPU in `devices`, behind a Dispatcher (a Runner itself)."""
    return open_per_device(devices, lambda d: TensorRTRunner(path, **{**options, "device": d}),
                           lambda r: cast("TensorRTRunner", r).model_sha256)
