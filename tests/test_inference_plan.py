"""Worker counts and backend options from the model config; ONNX Runtime GPU provider wiring."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest
from pydantic import ValidationError

from edge_agent.config.schema import ModelConfig
from edge_agent.inference.ort_gpu import open_onnxruntime, provider_chain, uses_gpu
from edge_agent.inference.ort_runner import OnnxRuntimeRunner
from edge_agent.inference.runner import RunnerError, load_runner
from edge_agent.pipeline.workers import WORKERS_PER_GPU, inference_plan


def _model(**fields: object) -> ModelConfig:
    return ModelConfig.model_validate({"path": "m.onnx", **fields})


@pytest.mark.parametrize(("fields", "cores", "workers", "threads"), [
    ({}, 2, 2, 1),  # one single-threaded worker per core
    ({}, 16, 16, 1),
    ({"threads": 4}, 16, 4, 4),  # threads set: workers fill the cores
    ({"threads": 4}, 2, 1, 4),  # never fewer than one worker
    ({"workers": 2}, 16, 2, 8),  # workers set: threads fill the cores
    ({"workers": 3, "threads": 1}, 2, 3, 1),  # both set: taken as given
])
def test_cpu_plan(fields: dict[str, object], cores: int, workers: int, threads: int) -> None:
    plan = inference_plan(_model(**fields), cores=cores)
    assert (plan.workers, plan.runner_options["threads"]) == (workers, threads)
    assert "providers" not in plan.runner_options


def test_tensorrt_plan_two_workers_per_gpu_and_engine_options(tmp_path: Path) -> None:
    plan = inference_plan(_model(backend="tensorrt", gpus=[0, 2], max_batch=16, engine_build="never",
                                 engine_cache=str(tmp_path)), cores=32)
    assert plan.workers == 2 * WORKERS_PER_GPU
    assert plan.runner_options == {"devices": (0, 2), "max_batch": 16, "build": "never", "cache_dir": tmp_path}


def test_onnxruntime_gpu_plan() -> None:
    plan = inference_plan(_model(providers=["tensorrt", "cuda", "cpu"], gpus=[1]), cores=8)
    assert plan.workers == WORKERS_PER_GPU
    assert plan.runner_options["providers"] == ("tensorrt", "cuda", "cpu")
    assert plan.runner_options["devices"] == (1,)
    cpu_only = inference_plan(_model(providers=["cpu"]), cores=4)
    assert (cpu_only.workers, cpu_only.runner_options) == (4, {"threads": 1, "providers": ("cpu",)})


@pytest.mark.parametrize(("fields", "message"), [
    ({"gpus": [0, 0]}, "lists a GPU twice"),
    ({"gpus": []}, "at least 1"),
    ({"providers": ["cuda", "cuda"]}, "lists a provider twice"),
    ({"providers": ["rocm"]}, "tensorrt"),
    ({"backend": "tensorrt", "providers": ["cuda"]}, "only applies to backend onnxruntime"),
    ({"workers": 0}, "greater than or equal to 1"),
])
def test_bad_gpu_settings_are_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _model(**fields)


def test_provider_chain_puts_the_device_in_each_gpu_provider() -> None:
    trt = {"device_id": "3", "trt_engine_cache_enable": "True"}
    chain = provider_chain(["tensorrt", "cuda", "cpu"], device=3, tensorrt_options=trt)
    assert chain == [("TensorrtExecutionProvider", trt), ("CUDAExecutionProvider", {"device_id": "3"}),
                     "CPUExecutionProvider"]
    assert uses_gpu(["cpu", "cuda"])
    assert not uses_gpu(["cpu"])
    assert not uses_gpu(None)


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(),
                    reason="this onnxruntime build has CUDA")
def test_gpu_providers_on_a_cpu_build_are_refused_with_the_reason(demo_model: Path) -> None:
    with pytest.raises(RunnerError, match="onnxruntime-gpu"):
        open_onnxruntime(demo_model, providers=["cuda", "cpu"])


def test_cpu_provider_by_short_name(demo_model: Path) -> None:
    runner = load_runner(demo_model, "onnxruntime", providers=["cpu"], threads=1)
    assert isinstance(runner, OnnxRuntimeRunner)
    assert runner.providers == ("CPUExecutionProvider",)
