"""TensorRT on a real GPU: engine builds per precision, parity with ONNX Runtime, GPU preprocessing, speed.

Runs wherever `tensorrt` and a CUDA build of torch import and see a GPU; elsewhere the whole module
is skipped with the reason in the test summary. On a GPU box (see the README):

    pip install -e '.[dev,gpu]'        # tensorrt from NVIDIA's index, torch with CUDA
    pytest -m gpu -s tests/gpu         # -s prints the speed table

Engines are built once into a temporary cache for the session (minutes per precision).
"""

import json
import time

import cv2
import numpy as np
import pytest

from edge_agent.inference.calibration import compare
from edge_agent.inference.detector import Detector, DetectorSettings
from edge_agent.inference.letterbox import Letterbox, resize_for, write_input
from edge_agent.inference.loading import open_model
from edge_agent.inference.runner import RunnerError
from edge_agent.inference.tensorrt_runner import TensorRTRunner, open_tensorrt, tensorrt_missing
from edge_agent.inference.trt_engine_cache import EngineCache
from edge_agent.inference.yolo_decode import decode
from edge_agent.manifest import Manifest, manifest_path_for
from edge_agent.precision.variants import variant_path

pytestmark = pytest.mark.gpu

MISSING = tensorrt_missing()
if MISSING:
    pytest.skip(f"GPU tests need TensorRT and CUDA: {MISSING}", allow_module_level=True)

import torch  # noqa: E402 - only where CUDA is known to be present

PRECISIONS = ["fp32", "fp16", "int8"]
MIN_IOU = 0.98
# Reduced precision moves confidences a little between backends; classes and boxes must agree.
MAX_CONF_DELTA = 0.05
MAX_BATCH = 8


def _model_path(demo_model, precision):
    path = demo_model if precision == "fp32" else variant_path(demo_model, precision)
    if not path.is_file():
        pytest.skip(f"{path.name} missing: run `edge-agent model precision --model {demo_model}`")
    return path


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("engines")


@pytest.fixture(scope="module", params=PRECISIONS)
def trt_model(request, demo_model, cache_dir):
    """(precision, model path, runner) with the engine built into the session's cache."""
    path = _model_path(demo_model, request.param)
    runner = TensorRTRunner(path, cache_dir=cache_dir, max_batch=MAX_BATCH)
    yield request.param, path, runner
    runner.close()


@pytest.fixture(scope="module")
def calibration_images(demo_manifest, calibration_dir):
    return [(e, cv2.imread(str(calibration_dir / e["file"]))) for e in demo_manifest.calibration["images"]]


def test_engine_is_built_then_cached(trt_model, cache_dir):
    """The first runner built the engine; a second one for the same key loads it from the cache."""
    precision, path, runner = trt_model
    meta = json.loads(EngineCache.metadata_path(runner.engine_path).read_text())
    assert meta["precision"] == precision
    assert meta["tensorrt_version"] == runner.key.tensorrt_version
    assert meta["gpu_name"] == torch.cuda.get_device_name(0)
    assert EngineCache(cache_dir).timing_cache_path(runner.key).is_file()
    again = TensorRTRunner(path, cache_dir=cache_dir, max_batch=MAX_BATCH, build="never")
    assert not again.built
    assert again.engine_path == runner.engine_path
    assert runner.device_memory_bytes > 0
    again.close()


def test_a_mismatched_engine_is_refused_with_the_reason(trt_model, cache_dir):
    """Asked for another profile with building forbidden, the runner says which field differs."""
    _, path, _ = trt_model
    with pytest.raises(RunnerError, match="max batch: engine has 8, this box needs 4"):
        TensorRTRunner(path, cache_dir=cache_dir, max_batch=4, build="never")


def test_parity_with_onnxruntime(trt_model, calibration_images):
    """On every calibration image: the classes ONNX Runtime (CPU) finds with the same ONNX file,
    each box matched with IoU >= 0.98."""
    precision, path, runner = trt_model
    calib = Manifest.load(manifest_path_for(path)).calibration
    settings = DetectorSettings(conf_threshold=calib["conf"], iou_threshold=calib["iou"])
    ort_model = open_model(path, settings=settings, warmup=False)
    trt_detector = Detector(runner, ort_model.manifest.class_names, input_hw=ort_model.detector.input_hw,
                            dynamic_hw=False, settings=settings)
    compared = 0
    for entry, img in calibration_images:
        (reference,) = ort_model.detector.detect([img])
        (det,) = trt_detector.detect([img])
        assert sorted(det.class_id.tolist()) == sorted(reference.class_id.tolist()), entry["file"]
        expected = [{"class_id": int(c), "confidence": float(p), "box": b.tolist()}
                    for b, p, c in zip(reference.xyxy, reference.confidence, reference.class_id, strict=True)]
        assert compare(expected, det, where=f"{precision} {entry['file']}", min_iou=MIN_IOU,
                       max_conf_delta=MAX_CONF_DELTA) == []
        compared += len(expected)
    assert compared >= 4


def test_gpu_letterbox_matches_the_cpu_path(calibration_images):
    """Pre-scaled frames give bit-identical inputs on the GPU; full frames within one grey level."""
    from edge_agent.inference.gpu_preprocess import GpuLetterbox

    letterbox = GpuLetterbox(4, "cuda:0")
    out = torch.empty((4, 3, 320, 320), device="cuda:0")
    for _, img in calibration_images:
        lb = Letterbox.fit(img.shape[:2], (320, 320))
        ref = np.empty((3, 320, 320), np.float32)
        write_input(resize_for(img, lb), lb, ref, bgr=True)
        prescaled = letterbox([resize_for(img, lb)], [lb], out)[0].cpu().numpy()
        assert np.array_equal(prescaled, ref)
        full = letterbox([img], [lb], out)[0].cpu().numpy()
        assert np.abs(full - ref).max() <= 1 / 255 + 1e-6


def test_infer_frames_equals_infer(trt_model, calibration_images):
    """GPU preprocessing feeds the engine the same input as the CPU path: same head output."""
    _, _, runner = trt_model
    boxes = [Letterbox.fit(img.shape[:2], (320, 320)) for _, img in calibration_images]
    scaled = [resize_for(img, lb) for (_, img), lb in zip(calibration_images, boxes, strict=True)]
    cpu_batch = np.empty((len(scaled), 3, 320, 320), np.float32)
    for slot, img, lb in zip(cpu_batch, scaled, boxes, strict=True):
        write_input(img, lb, slot, bgr=True)
    np.testing.assert_allclose(runner.infer_frames(scaled, boxes), runner.infer(cpu_batch), atol=1e-5)


def _ms_per_batch(fn, iters=50):
    for _ in range(5):
        fn()
    started = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - started) * 1000 / iters


def test_speed_per_precision(trt_model, record_property, capsys):
    """Batch 1 and 8 latency (host float32 in, host output back, synchronised), per precision."""
    precision, _, runner = trt_model
    results = {}
    for batch in (1, MAX_BATCH):
        x = np.random.default_rng(0).random((batch, 3, 320, 320), dtype=np.float32)
        ms = _ms_per_batch(lambda x=x: runner.infer(x))
        results[batch] = ms
        record_property(f"{precision}_batch{batch}_ms", round(ms, 3))
    with capsys.disabled():
        print(f"\n[{precision}] {torch.cuda.get_device_name(0)}: batch 1 {results[1]:.2f} ms, "
              f"batch {MAX_BATCH} {results[MAX_BATCH]:.2f} ms ({1000 * MAX_BATCH / results[MAX_BATCH]:.0f} img/s)")
    assert all(ms > 0 for ms in results.values())


def test_nms_host_versus_device(trt_model, record_property, capsys):
    """Decode + NMS of a full batch on the host (what the detector does) against torchvision on the GPU."""
    torchvision = pytest.importorskip("torchvision")
    _, _, runner = trt_model
    x = np.random.default_rng(1).random((MAX_BATCH, 3, 320, 320), dtype=np.float32)
    head = runner.infer(x)

    def host():
        for per_image in head:
            decode(per_image, conf_threshold=0.25, iou_threshold=0.7)

    head_dev = torch.from_numpy(head).cuda()

    def device():
        for per_image in head_dev:
            scores, cls = per_image[4:].max(0)
            keep = scores > 0.25
            xywh = per_image[:4, keep].T
            xyxy = torch.cat([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)
            torchvision.ops.batched_nms(xyxy, scores[keep], cls[keep], 0.7).cpu()

    host_ms, device_ms = _ms_per_batch(host), _ms_per_batch(device)
    record_property("nms_host_ms", round(host_ms, 3))
    record_property("nms_device_ms", round(device_ms, 3))
    with capsys.disabled():
        print(f"\nNMS for a batch of {MAX_BATCH}: host {host_ms:.2f} ms, device {device_ms:.2f} ms")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_gpus_dispatch(demo_model, cache_dir):
    """One runner per GPU behind a dispatcher; both serve the same sha256 and both get batches."""
    runner = open_tensorrt(demo_model, devices=[0, 1], cache_dir=cache_dir, max_batch=MAX_BATCH)
    x = np.zeros((2, 3, 320, 320), np.float32)
    for _ in range(4):
        runner.infer(x)
    stats = runner.snapshot()
    assert len({s["model_sha256"] for s in stats}) == 1
    assert all(s["batches"] == 2 for s in stats)
    runner.close()
