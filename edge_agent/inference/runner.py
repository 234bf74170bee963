"""The model-runner boundary: a backend takes an NCHW float batch and returns the raw head output.

Backends (ONNX Runtime here, TensorRT on GPU boxes) know nothing of cameras, letterboxing or
MQTT. Adding a backend means adding one module and one entry in `load_runner`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

Backend = Literal["onnxruntime", "tensorrt"]


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One model input or output. Dynamic dimensions are None."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str

    @property
    def is_dynamic(self) -> bool:
        return any(d is None for d in self.shape)


class Runner(Protocol):
    """A loaded model that runs whole batches."""

    @property
    def inputs(self) -> tuple[TensorSpec, ...]: ...

    @property
    def outputs(self) -> tuple[TensorSpec, ...]: ...

    def warmup(self, batch_size: int, height: int, width: int) -> None:
        """Run throw-away batches so that the first real frame pays no one-off costs."""

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """`batch` is float32 [N, 3, H, W] in 0..1, RGB; returns the head output [N, 4 + C, A]."""

    def close(self) -> None: ...


class RunnerError(RuntimeError):
    """A model that cannot be loaded or run; the message says why."""


def load_runner(path: Path, backend: Backend = "onnxruntime", **options: Any) -> Runner:
    """Load `path` with the named backend. Imports are lazy so a CPU box never imports TensorRT."""
    if not path.is_file():
        raise RunnerError(f"model file not found: {path}")
    if backend == "onnxruntime":
        from edge_agent.inference.ort_gpu import open_onnxruntime

        return open_onnxruntime(path, **options)
    if backend == "tensorrt":
        from edge_agent.inference.tensorrt_runner import open_tensorrt

        options.pop("threads", None)  # CPU threads mean nothing to an engine
        return open_tensorrt(path, **options)
    raise RunnerError(f"backend {backend!r} is not available in this build")
