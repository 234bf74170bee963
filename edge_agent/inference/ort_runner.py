"""ONNX Runtime backend: the CPU path everywhere, and CUDA where onnxruntime-gpu is installed."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edge_agent.inference.runner import RunnerError, TensorSpec

log = logging.getLogger(__name__)

_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(uint8)": "uint8"}
# Preferred order when the caller names no providers: a GPU provider if this build has one.
_AUTO_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
# A provider's name, or its name with options (device_id, TensorRT caches...), as ORT takes them.
ProviderSpec = str | tuple[str, Mapping[str, str]]


def provider_name(spec: ProviderSpec) -> str:
    return spec if isinstance(spec, str) else spec[0]


def _spec(arg: ort.NodeArg) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) and d > 0 else None for d in arg.shape)
    return TensorSpec(arg.name, shape, _ORT_TYPES.get(arg.type, arg.type))


def choose_providers(requested: Sequence[ProviderSpec] | None, available: Sequence[str]) -> list[ProviderSpec]:
    """The providers to ask for: the requested ones (all must exist) or the best available."""
    if requested:
        missing = [provider_name(p) for p in requested if provider_name(p) not in available]
        if missing:
            raise RunnerError(f"execution providers not available: {missing}; "
                              f"this build has {list(available)}")
        return list(requested)
    return [p for p in _AUTO_PROVIDERS if p in available] or list(available[:1])


class OnnxRuntimeRunner:
    """One ONNX Runtime session. `infer` is called from one thread (the batcher's)."""

    def __init__(
        self,
        path: Path,
        *,
        threads: int | None = None,
        providers: Sequence[ProviderSpec] | None = None,
        spin: bool = True,
    ) -> None:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # YOLO's graph is one chain; inter-op parallelism only adds idle threads.
        opts.inter_op_num_threads = 1
        if threads is not None:
            opts.intra_op_num_threads = threads
        # Spinning trades CPU for latency; a box that also decodes many streams may prefer it off.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        chosen = [p if isinstance(p, str) else (p[0], dict(p[1]))
                  for p in choose_providers(providers, ort.get_available_providers())]
        try:
            self._session = ort.InferenceSession(str(path), sess_options=opts, providers=chosen)
        except Exception as exc:  # ORT raises its own untyped errors for bad graphs
            raise RunnerError(f"ONNX Runtime cannot load {path}: {exc}") from exc
        self._inputs = tuple(_spec(a) for a in self._session.get_inputs())
        self._outputs = tuple(_spec(a) for a in self._session.get_outputs())
        if len(self._inputs) != 1 or len(self._outputs) != 1:
            raise RunnerError(f"{path}: expected one input and one output, got "
                              f"{len(self._inputs)} and {len(self._outputs)}")
        self._input_name = self._inputs[0].name
        self._output_names = [self._outputs[0].name]
        self.providers = tuple(self._session.get_providers())
        log.info("onnxruntime session for %s on %s", path.name, ",".join(self.providers))

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._outputs

    def warmup(self, batch_size: int, height: int, width: int) -> None:
        dummy = np.full((batch_size, 3, height, width), 114 / 255, dtype=np.float32)
        for _ in range(2):
            self.infer(dummy)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        out = self._session.run(self._output_names, {self._input_name: batch})[0]
        return np.asarray(out)

    def close(self) -> None:
        # Dropping the session frees its arena; ORT has no explicit close.
        del self._session
