"""Precision variants: FP16 and Q/DQ INT8 conversion, their accuracy check, and the shipped variants."""

import json
from pathlib import Path

import numpy as np
import pytest

from edge_agent.evaluation import heldout_samples
from edge_agent.inference.calibration import check_calibration
from edge_agent.inference.loading import open_model
from edge_agent.inference.runner import load_runner
from edge_agent.manifest import Manifest, manifest_path_for
from edge_agent.precision.fp16 import _sort_topologically, convert_fp16
from edge_agent.precision.int8 import calibration_inputs, dfl_conv_names, quantize_int8
from edge_agent.precision.variants import (
    MAX_MAP50_DROP,
    VariantSettings,
    calibration_settings,
    copy_model,
    make_variants,
    measure,
    variant_path,
)

onnx = pytest.importorskip("onnx", reason="variants need the `onnx` package (train extra)")
from onnx import TensorProto, numpy_helper  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
VIDEOS = tuple(sorted((REPO / "demo" / "videos").glob("*.mp4")))
# Re-measuring a shipped variant on another machine may differ in the last digits (float summation
# order in other CPU kernels); the recorded number is rounded to 4 places.
REMEASURE_TOLERANCE = 0.005


@pytest.fixture(scope="module")
def calib_inputs(demo_manifest, calibration_dir):
    images = [calibration_dir / e["file"] for e in demo_manifest.calibration["images"]]
    return calibration_inputs(images, VIDEOS, demo_manifest.input_size, every=60)


@pytest.fixture(scope="module")
def fp16_model(tmp_path_factory, demo_model):
    path = tmp_path_factory.mktemp("fp16") / "m.fp16.onnx"
    convert_fp16(demo_model, path)
    return path


@pytest.fixture(scope="module")
def int8_model(tmp_path_factory, demo_model, calib_inputs):
    path = tmp_path_factory.mktemp("int8") / "m.int8.onnx"
    quantize_int8(demo_model, path, calib_inputs, method="minmax")
    return path


def _io_types(model):
    return [(v.name, v.type.tensor_type.elem_type) for v in (*model.graph.input, *model.graph.output)]


def test_fp16_keeps_float32_io_and_halves_the_file(demo_model, fp16_model):
    """Float32 in and out (runners and preprocessing unchanged), weights in fp16, a sorted graph."""
    model = onnx.load(str(fp16_model))
    assert {t for _, t in _io_types(model)} == {TensorProto.FLOAT}
    weights = [i for i in model.graph.initializer if len(i.dims) == 4]
    assert weights
    assert all(w.data_type == TensorProto.FLOAT16 for w in weights)
    onnx.checker.check_model(model)  # includes: nodes in topological order
    assert 0.45 < fp16_model.stat().st_size / demo_model.stat().st_size < 0.55


def test_fp16_output_close_to_fp32(demo_model, fp16_model, calib_inputs):
    """Same head output up to fp16 rounding (boxes within a pixel at 320, scores within 0.01)."""
    x = calib_inputs[:2]
    ref = load_runner(demo_model, threads=1).infer(x)
    got = load_runner(fp16_model, threads=1).infer(x)
    assert got.dtype == np.float32
    assert np.abs(got[:, :4] - ref[:, :4]).max() < 1.0
    assert np.abs(got[:, 4:] - ref[:, 4:]).max() < 0.01


def test_int8_is_tensorrt_explicit_quantization(demo_model, int8_model):
    """Symmetric int8 (zero point 0), per-channel weights in [-127, 127], float biases, DFL in float."""
    model = onnx.load(str(int8_model))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    q_nodes = [n for n in model.graph.node if n.op_type in {"QuantizeLinear", "DequantizeLinear"}]
    assert q_nodes
    for node in q_nodes:
        zero_point = inits[node.input[2]]
        assert zero_point.dtype == np.int8
        assert not zero_point.any()
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:  # a quantized weight
            weight = inits[node.input[0]]
            assert weight.dtype == np.int8  # never int32: TensorRT dequantizes no int32 biases
            assert weight.min() >= -127
            assert inits[node.input[1]].shape == (weight.shape[0],)  # one scale per output channel
    convs = {n.name: n for n in model.graph.node if n.op_type == "Conv"}
    produced_by = {o: n for n in model.graph.node for o in n.output}

    def weight_quantized(conv):
        producer = produced_by.get(conv.input[1])
        return producer is not None and producer.op_type == "DequantizeLinear"

    (dfl,) = dfl_conv_names(onnx.load(str(demo_model)))
    assert not weight_quantized(convs[dfl])
    assert sum(weight_quantized(c) for c in convs.values()) == len(convs) - 1
    assert _io_types(model) == _io_types(onnx.load(str(demo_model)))
    assert int8_model.stat().st_size / demo_model.stat().st_size < 0.35


def test_int8_runs_on_onnxruntime(int8_model, calib_inputs):
    """The Q/DQ model loads and gives the head output shape on the CPU."""
    out = load_runner(int8_model, threads=1).infer(calib_inputs[:2])
    assert out.shape == (2, 8, 2100)


def test_sort_topologically(demo_model):
    """A graph with its nodes reversed comes back producer-first; a sorted graph keeps its order."""
    model = onnx.load(str(demo_model))
    names = [n.name for n in model.graph.node]
    _sort_topologically(model.graph)
    assert [n.name for n in model.graph.node] == names
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(reversed(nodes))
    with pytest.raises(onnx.checker.ValidationError, match="topologically sorted"):
        onnx.checker.check_model(model)
    _sort_topologically(model.graph)
    onnx.checker.check_model(model)
    assert sorted(n.name for n in model.graph.node) == sorted(names)


def test_make_variants_writes_verified_variants(tmp_path, demo_model):
    """End to end on a copy: both variants measured against FP32, written with manifests that verify."""
    model = copy_model(demo_model, tmp_path)
    settings = VariantSettings(heldout_images=12, int8_method="minmax", videos=VIDEOS, video_every=100,
                               threads=1, max_drop=1.0, command="test")
    reference, reports = make_variants(model, ["fp16", "int8"], settings)
    assert reference.images == 12
    parent = Manifest.load(manifest_path_for(model))
    for report in reports:
        assert report.accepted
        path = variant_path(model, report.precision)
        assert report.path == path
        manifest = Manifest.load(manifest_path_for(path))
        manifest.verify_file(path)
        assert (manifest.parent, manifest.training["parent_sha256"]) == (parent.sha256, parent.sha256)
        assert manifest.training["precision"] == report.precision
        assert manifest.metrics["mAP50_drop"] == pytest.approx(report.drop, abs=1e-4)
        assert manifest.metrics["fp32_mAP50"] == pytest.approx(reference.map50, abs=1e-4)
        assert manifest.input_size == parent.input_size
        loaded = open_model(path, warmup=False)  # the runtime accepts it like any model
        calib = manifest.calibration
        detector = open_model(path, settings=calibration_settings(calib), warmup=False).detector
        report_c = check_calibration(detector, calib, tmp_path / calib["dir"])
        assert report_c.problems == []
        assert loaded.manifest.version == f"{parent.version}+{report.precision}"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".variant-")]


def test_a_variant_that_loses_accuracy_is_not_written(tmp_path, demo_model):
    """With an impossible bar, the variant is measured, reported as rejected, and not written."""
    model = copy_model(demo_model, tmp_path)
    settings = VariantSettings(heldout_images=4, threads=1, max_drop=-1.0)
    _, (report,) = make_variants(model, ["fp16"], settings)
    assert not report.accepted
    assert not variant_path(model, "fp16").exists()
    assert not manifest_path_for(variant_path(model, "fp16")).exists()
    assert report.to_dict()["accepted"] is False


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_shipped_variant(precision, demo_model, demo_manifest, calibration_dir):
    """The committed variant belongs to the shipped model, lost at most one mAP50 point, and still
    measures what its manifest records."""
    path = variant_path(demo_model, precision)
    manifest = Manifest.load(manifest_path_for(path))
    manifest.verify_file(path)
    assert manifest.parent == demo_manifest.sha256, "made from another model: re-run `edge-agent model precision`"
    metrics = manifest.metrics
    assert metrics["mAP50_drop"] <= MAX_MAP50_DROP
    assert metrics["fp32_mAP50"] - metrics["mAP50"] == pytest.approx(metrics["mAP50_drop"], abs=2e-4)
    result = measure(path, manifest, heldout_samples(metrics["images"]), threads=2)
    assert result.map50 == pytest.approx(metrics["mAP50"], abs=REMEASURE_TOLERANCE)
    calib = manifest.calibration
    model = open_model(path, settings=calibration_settings(calib), warmup=False)
    report = check_calibration(model.detector, calib, calibration_dir)
    assert report.problems == []
    assert json.loads(manifest_path_for(path).read_text())["version"].endswith(f"+{precision}")
