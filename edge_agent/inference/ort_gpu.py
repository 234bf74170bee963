"""ONNX Runtime on NVIDIA GPUs (onnxruntime-gpu): the CUDA or TensorRT execution providers.

The second GPU option next to our own TensorRT backend: no engine building code of ours, ORT
builds and caches TensorRT engines itself (in `engines/ort-trt/` beside the model). One session
per configured GPU behind the same `Dispatcher` as the TensorRT backend, so stats and dispatch
look the same. The TensorRT provider gets an explicit optimisation profile: without one, ORT
rebuilds its engine each time a batch larger than any seen before arrives, i.e. on a live box
under rising load. Rect inputs (320x192 for a 16:9 camera) need the profile's minimum below the
trained square, so it admits any stride-aligned size down to one stride.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import onnxruntime as ort

from edge_agent.inference.dispatch import open_per_device
from edge_agent.inference.ort_runner import OnnxRuntimeRunner, ProviderSpec
from edge_agent.inference.runner import Runner, RunnerError
from edge_agent.inference.trt_engine_cache import STRIDE, ort_tensorrt_provider_options, profile_shapes
from edge_agent.manifest import Manifest, ManifestError, manifest_path_for, sha256_file

ProviderName = Literal["tensorrt", "cuda", "cpu"]
ORT_NAMES: dict[ProviderName, str] = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
GPU_PROVIDERS = frozenset({"tensorrt", "cuda"})


def uses_gpu(providers: Sequence[ProviderName] | None) -> bool:
    return bool(providers) and any(p in GPU_PROVIDERS for p in providers or ())


def provider_chain(providers: Sequence[ProviderName], *, device: int,
                   tensorrt_options: dict[str, str] | None = None) -> list[ProviderSpec]:
    """ORT's provider list for one GPU, in the order given (ORT falls back along it per node)."""
    chain: list[ProviderSpec] = []
    for name in providers:
        if name == "tensorrt":
            chain.append((ORT_NAMES[name], tensorrt_options or {"device_id": str(device)}))
        elif name == "cuda":
            chain.append((ORT_NAMES[name], {"device_id": str(device)}))
        else:
            chain.append(ORT_NAMES[name])
    return chain


def _input_name_and_hw(path: Path) -> tuple[str, tuple[int, int]]:
    """The input's name and trained size, read without touching a GPU."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        probe = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own untyped errors for bad graphs
        raise RunnerError(f"ONNX Runtime cannot load {path}: {exc}") from exc
    arg = probe.get_inputs()[0]
    h, w = arg.shape[2], arg.shape[3]
    if isinstance(h, int) and isinstance(w, int):
        return arg.name, (h, w)
    try:
        return arg.name, Manifest.load(manifest_path_for(path)).input_size
    except ManifestError as exc:
        raise RunnerError(f"{path.name} has a dynamic input size; its manifest must give input_size: {exc}") from exc


def open_onnxruntime(
    path: Path,
    *,
    providers: Sequence[ProviderName] | None = None,
    devices: Sequence[int] = (0,),
    threads: int | None = None,
    spin: bool = True,
    max_batch: int = 8,
    cache_dir: Path | None = None,
) -> Runner:
    """A CPU session, or one session per GPU in `devices` when a GPU provider is named."""
    if not uses_gpu(providers):
        names = [ORT_NAMES[p] for p in providers] if providers else None
        return OnnxRuntimeRunner(path, threads=threads, providers=names, spin=spin)
    requested = list(providers or ())
    available = ort.get_available_providers()
    missing = [p for p in requested if ORT_NAMES[p] not in available]
    if missing:
        raise RunnerError(f"ONNX Runtime providers {missing} are not in this build (it has {available}); "
                          "the GPU providers come with the onnxruntime-gpu package, installed instead of "
                          "onnxruntime, with CUDA (and TensorRT for 'tensorrt') libraries on the box")
    trt_options: dict[int, dict[str, str]] = {}
    if "tensorrt" in requested:
        input_name, input_hw = _input_name_and_hw(path)
        shapes = profile_shapes(max_batch, input_hw, min_hw=(STRIDE, STRIDE))
        folder = cache_dir or path.parent / "engines"
        trt_options = {d: ort_tensorrt_provider_options(shapes, folder, input_name, d) for d in devices}
    sha = sha256_file(path)
    return open_per_device(
        devices,
        lambda d: OnnxRuntimeRunner(path, threads=threads, spin=spin,
                                    providers=provider_chain(requested, device=d,
                                                             tensorrt_options=trt_options.get(d))),
        lambda _runner: sha)
