"""How many inference workers, and what the backend is asked for, from the model config.

CPU (ONNX Runtime): one worker per usable core, each running its batches with one intra-op
thread on a session they share. Measured on the 2-core reference VM (docs/performance.md): one
session with two spinning threads costs 19.0 ms CPU per image at 320x192 in the pipeline, one
thread 12.7 ms, so two single-threaded workers infer more images per second on the same cores
than one two-threaded worker. With `model.threads` set, workers default to cores // threads.

GPU (TensorRT, or ONNX Runtime with its CUDA/TensorRT providers): two workers per GPU, so that
one letterboxes and decodes boxes on the host while the other's batch runs on the device; the
dispatcher sends each batch to the least busy GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from edge_agent.config.schema import ModelConfig
from edge_agent.inference.ort_gpu import uses_gpu

WORKERS_PER_GPU = 2


def usable_cores() -> int:
    """Cores this process may run on (the cgroup/affinity set systemd gives it, not the machine's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True, slots=True)
class InferencePlan:
    workers: int
    runner_options: dict[str, Any]

    def describe(self) -> str:
        detail = ", ".join(f"{k}={v}" for k, v in sorted(self.runner_options.items()))
        return f"{self.workers} worker{'s' if self.workers != 1 else ''} ({detail})"


def inference_plan(model: ModelConfig, cores: int | None = None) -> InferencePlan:
    cores = cores if cores is not None else usable_cores()
    gpu_options: dict[str, Any] = {"devices": model.gpus, "max_batch": model.max_batch}
    if model.engine_cache is not None:
        gpu_options["cache_dir"] = model.engine_cache
    if model.backend == "tensorrt":
        return InferencePlan(model.workers or WORKERS_PER_GPU * len(model.gpus),
                             {**gpu_options, "build": model.engine_build})
    if uses_gpu(model.providers):
        return InferencePlan(model.workers or WORKERS_PER_GPU * len(model.gpus),
                             {**gpu_options, "providers": model.providers, "threads": model.threads or 1})
    if model.workers is not None:
        workers, threads = model.workers, model.threads or max(1, cores // model.workers)
    else:
        threads = model.threads or 1
        workers = max(1, cores // threads)
    options: dict[str, Any] = {"threads": threads}
    if model.providers is not None:
        options["providers"] = model.providers
    return InferencePlan(workers, options)
