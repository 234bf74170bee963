"""The TensorRT backend's CPU-testable parts: profile shapes, cache keys, mismatch reasons,
invalidation, build policy, the `model build` command, and the GPU letterbox run on a CPU tensor.

The one fake is the engine builder (the TensorRT boundary), which returns bytes.
"""

import argparse
import dataclasses
import json
import shutil

import numpy as np
import pytest

from edge_agent.commands import model as model_command
from edge_agent.inference.letterbox import Letterbox, resize_for, write_input
from edge_agent.inference.runner import RunnerError
from edge_agent.inference.tensorrt_runner import (
    GpuIdentity,
    TensorRTRunner,
    TensorRTSettings,
    engine_key,
    tensorrt_missing,
    variant_precision,
)
from edge_agent.inference.trt_engine_cache import (
    EngineCache,
    EngineCacheError,
    EngineKey,
    ensure_engine,
    mismatches,
    ort_tensorrt_provider_options,
    profile_shapes,
)
from edge_agent.manifest import Manifest, sha256_file

SHA = "ab" * 32
GPU = GpuIdentity(0, "NVIDIA A2", (8, 6), 15 << 30)


def _key(**changes) -> EngineKey:
    key = EngineKey.create(onnx_sha256=SHA, precision="int8", tensorrt_version="10.3.0", gpu_name="NVIDIA A2",
                           compute_capability=(8, 6), shapes=profile_shapes(8, (320, 320)))
    return dataclasses.replace(key, **changes)


class FakeBuilder:
    """Stands in for TensorRT: returns engine bytes and a timing cache that grows with each build."""

    def __init__(self, engine: bytes = b"engine-bytes") -> None:
        self.engine = engine
        self.timing_seen: list[bytes] = []

    def __call__(self, timing: bytes) -> tuple[bytes, bytes]:
        self.timing_seen.append(timing)
        return self.engine, timing + b"t"


@pytest.mark.parametrize(
    ("args", "kwargs", "expected"),
    [
        ((8, (320, 320)), {}, ((1, 3, 320, 320), (8, 3, 320, 320), (8, 3, 320, 320))),
        ((8, (320, 320)), {"opt_batch": 4}, ((1, 3, 320, 320), (4, 3, 320, 320), (8, 3, 320, 320))),
        ((1, (640, 640)), {}, ((1, 3, 640, 640), (1, 3, 640, 640), (1, 3, 640, 640))),
        ((4, (320, 320)), {"min_hw": (192, 320)}, ((1, 3, 192, 320), (4, 3, 320, 320), (4, 3, 320, 320))),
    ],
)
def test_profile_shapes(args, kwargs, expected):
    """Batch 1..max, tuned for opt (default: max); H/W fixed unless a minimum rectangle is given."""
    shapes = profile_shapes(*args, **kwargs)
    assert (shapes.min, shapes.opt, shapes.max) == expected


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((0, (320, 320)), {}, "max_batch"),
        ((4, (320, 320)), {"opt_batch": 5}, "opt_batch"),
        ((4, (320, 300)), {}, "multiples of 32"),
        ((4, (320, 320)), {"min_hw": (352, 320)}, "larger"),
    ],
)
def test_profile_shapes_refuses_nonsense(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        profile_shapes(*args, **kwargs)


def test_profile_admits_and_fixed_hw():
    """A batch fits if every dimension lies within min..max; a fixed profile reports its H/W."""
    fixed = profile_shapes(8, (320, 320))
    assert fixed.fixed_hw == (320, 320)
    assert fixed.admits((3, 3, 320, 320))
    assert not fixed.admits((9, 3, 320, 320))
    assert not fixed.admits((1, 3, 192, 320))
    rect = profile_shapes(8, (320, 320), min_hw=(192, 320))
    assert rect.fixed_hw is None
    assert rect.admits((2, 3, 192, 320))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"onnx_sha256": "cd" * 32}, "onnx sha256: engine has cdcdcdcdcdcd, this box needs abababababab"),
        ({"precision": "fp16"}, "precision: engine has fp16, this box needs int8"),
        ({"tensorrt_version": "11.4.0"}, "tensorrt version: engine has 11.4.0, this box needs 10.3.0"),
        ({"gpu_name": "NVIDIA L4"}, "gpu name: engine has NVIDIA L4, this box needs NVIDIA A2"),
        ({"compute_capability": (8, 9)}, "compute capability: engine has 8.9, this box needs 8.6"),
        ({"opt_batch": 4}, "opt batch: engine has 4, this box needs 8"),
        ({"max_batch": 16}, "max batch: engine has 16, this box needs 8"),
        ({"max_hw": (640, 640)}, "max hw: engine has 640x640, this box needs 320x320"),
    ],
)
def test_every_key_field_changes_the_key_and_is_named(change, reason):
    """Any field that differs gives another digest and file name, and is reported by name."""
    other = _key(**change)
    assert other.digest() != _key().digest()
    assert other.file_name("m") != _key().file_name("m")
    assert mismatches(_key(), json.loads(json.dumps(other.fields()))) == [reason]


def test_key_digest_is_stable():
    """The digest depends on the fields only (a key read back from JSON gives the same file name)."""
    assert _key().digest() == _key().digest()
    assert _key().file_name("demo-parts").startswith("demo-parts.int8.")
    assert mismatches(_key(), json.loads(json.dumps(_key().fields()))) == []
    assert _key().shapes == profile_shapes(8, (320, 320))


def test_store_then_lookup_hits(tmp_path):
    """A stored engine is found for its key, with metadata that repeats every key field."""
    cache = EngineCache(tmp_path)
    path = cache.store(_key(), "demo", b"engine-bytes", build_s=1.5)
    found = cache.lookup(_key(), "demo")
    assert found.hit
    assert found.path == path
    meta = json.loads(cache.metadata_path(path).read_text())
    assert meta["tensorrt_version"] == "10.3.0"
    assert meta["engine_size_bytes"] == len(b"engine-bytes")
    assert meta["build_s"] == 1.5
    assert not list(tmp_path.glob(".*"))  # no temp files left behind


def test_lookup_explains_each_near_miss(tmp_path):
    """With engines for another TensorRT and another GPU cached, the miss names both differences."""
    cache = EngineCache(tmp_path)
    cache.store(_key(tensorrt_version="10.1.0"), "demo", b"a")
    cache.store(_key(gpu_name="NVIDIA L4", compute_capability=(8, 9)), "demo", b"b")
    cache.store(_key(), "other-model", b"c")
    found = cache.lookup(_key(), "demo")
    assert not found.hit
    text = " | ".join(found.reasons)
    assert "tensorrt version: engine has 10.1.0" in text
    assert "gpu name: engine has NVIDIA L4" in text
    assert "compute capability: engine has 8.9" in text
    assert "other-model" not in text
    assert EngineCache(tmp_path / "empty").lookup(_key(), "demo").reasons[0].startswith("no engine for demo")


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        # each damage gets (engine path, metadata path)
        (lambda paths: paths[0].write_bytes(b"engine-byt"), "bytes, metadata says"),  # truncated
        (lambda paths: paths[0].write_bytes(b"ENGINE-BYTES"), "sha256"),  # altered, same size
        (lambda paths: paths[1].unlink(), "metadata file missing"),  # metadata lost
        (lambda paths: paths[1].write_text(paths[1].read_text().replace('"schema": 1', '"schema": 99')),
         "schema 99"),
    ],
)
def test_damaged_engine_is_not_used(tmp_path, damage, reason):
    """An engine whose bytes or metadata do not hold up is a miss, with the reason."""
    cache = EngineCache(tmp_path)
    path = cache.store(_key(), "demo", b"engine-bytes")
    damage((path, cache.metadata_path(path)))
    found = cache.lookup(_key(), "demo")
    assert not found.hit
    assert reason in found.reasons[0]


def test_ensure_builds_once_then_uses_the_cache(tmp_path):
    """First call builds (and saves the timing cache), the second finds the engine; no rebuild."""
    cache, build = EngineCache(tmp_path), FakeBuilder()
    path, built = ensure_engine(cache, _key(), "demo", policy="if-missing", build=build)
    assert built
    assert path.read_bytes() == b"engine-bytes"
    assert ensure_engine(cache, _key(), "demo", policy="if-missing", build=build) == (path, False)
    assert build.timing_seen == [b""]
    assert cache.timing_cache_path(_key()).read_bytes() == b"t"
    assert cache.timing_cache_path(_key()).name == "timing-trt10.3.0-nvidia-a2-sm86.cache"


def test_ensure_rebuilds_a_mismatch_and_reuses_the_timing_cache(tmp_path):
    """A new profile gets its own engine beside the old one, built with the timing cache so far."""
    cache, build = EngineCache(tmp_path), FakeBuilder()
    old, _ = ensure_engine(cache, _key(), "demo", policy="if-missing", build=build)
    new, built = ensure_engine(cache, _key(max_batch=16), "demo", policy="if-missing", build=build)
    assert built
    assert new != old
    assert build.timing_seen == [b"", b"t"]  # same GPU and TensorRT: the timing cache carries over


def test_ensure_never_refuses_with_reasons(tmp_path):
    """Policy `never`: no build; the error says which field differed and how to pre-build."""
    cache, build = EngineCache(tmp_path), FakeBuilder()
    ensure_engine(cache, _key(tensorrt_version="10.1.0"), "demo", policy="if-missing", build=build)
    with pytest.raises(EngineCacheError, match=r"tensorrt version: engine has 10\.1\.0.*edge-agent model build"):
        ensure_engine(cache, _key(), "demo", policy="never", build=build)
    assert len(build.timing_seen) == 1


def test_ensure_always_rebuilds(tmp_path):
    """Policy `always` (model build --force) replaces a valid cached engine."""
    cache = EngineCache(tmp_path)
    ensure_engine(cache, _key(), "demo", policy="if-missing", build=FakeBuilder(b"old"))
    path, built = ensure_engine(cache, _key(), "demo", policy="always", build=FakeBuilder(b"new"))
    assert built
    assert path.read_bytes() == b"new"
    assert cache.lookup(_key(), "demo").hit


def test_engine_key_from_a_variant(tmp_path, demo_model, demo_manifest):
    """The key takes the variant's own sha256 and precision, and the box's GPU and TensorRT."""
    variant = tmp_path / "demo-parts.int8.onnx"
    shutil.copyfile(demo_model, variant)
    data = demo_manifest.to_dict()
    data["training"] = {**data["training"], "precision": "int8"}
    manifest = Manifest(**data)
    key = engine_key(variant, manifest, TensorRTSettings(max_batch=4), tensorrt_version="11.4.0", gpu=GPU)
    assert key.onnx_sha256 == sha256_file(variant)
    assert (key.precision, key.max_batch, key.max_hw) == ("int8", 4, (320, 320))
    assert (key.gpu_name, key.compute_capability, key.tensorrt_version) == ("NVIDIA A2", (8, 6), "11.4.0")
    assert variant_precision(demo_manifest) == "fp32"
    with pytest.raises(RunnerError, match="bf8"):
        variant_precision(Manifest(**{**data, "training": {"precision": "bf8"}}))


def test_ort_tensorrt_provider_options(tmp_path):
    """ONNX Runtime's TensorRT EP gets the same profile and a cache folder of its own."""
    options = ort_tensorrt_provider_options(_key().shapes, tmp_path, "images", device_id=1)
    assert options["trt_profile_min_shapes"] == "images:1x3x320x320"
    assert options["trt_profile_opt_shapes"] == "images:8x3x320x320"
    assert options["device_id"] == "1"
    assert options["trt_engine_cache_path"] == str(tmp_path / "ort-trt")


@pytest.mark.skipif(tensorrt_missing() is None, reason="TensorRT and CUDA are present on this box")
def test_tensorrt_runner_says_what_is_missing(demo_model):
    """Without TensorRT/CUDA the runner refuses with the reason, and imports nothing from them."""
    with pytest.raises(RunnerError, match="tensorrt backend unavailable"):
        TensorRTRunner(demo_model, max_batch=4, threads=2)  # threads: a CPU option, accepted and ignored


def test_tensorrt_runner_refuses_unknown_options(demo_model):
    """A misspelt option is an error naming it, before anything is imported or built."""
    with pytest.raises(RunnerError, match="max_btach"):
        TensorRTRunner(demo_model, max_btach=4)


def _cli():
    parser = argparse.ArgumentParser(prog="edge-agent")
    model_command.add_parser(parser.add_subparsers(dest="command"))
    return parser


def test_model_build_help_documents_the_cache(capsys):
    """`edge-agent model build --help` explains the cache key, the files and when it rebuilds."""
    with pytest.raises(SystemExit):
        _cli().parse_args(["model", "build", "--help"])
    text = capsys.readouterr().out
    for words in ("engine cache", "sha256 of the ONNX variant", "TensorRT version", "compute",
                  "batch profile", "input size", ".engine", ".json", "timing", "rebuilt", "refused"):
        assert words in text, words


@pytest.mark.skipif(tensorrt_missing() is None, reason="TensorRT and CUDA are present on this box")
def test_model_build_without_tensorrt_exits_2(capsys, demo_model):
    """On a box without TensorRT, `model build` exits 2 and says why."""
    args = _cli().parse_args(["model", "build", "--model", str(demo_model)])
    assert args.func(args) == 2
    assert "tensorrt" in capsys.readouterr().err


@pytest.mark.parametrize("source_hw", [(720, 1280), (360, 640), (480, 480), (100, 333)])
def test_gpu_letterbox_matches_the_cpu_path(source_hw):
    """The device letterbox (here on a CPU tensor) gives the CPU path's input: bit-identical for
    frames the decoder already scaled, within one grey level for frames it still has to scale."""
    torch = pytest.importorskip("torch")
    import cv2

    from edge_agent.inference.gpu_preprocess import GpuLetterbox

    rng = np.random.default_rng(sum(source_hw))
    img = cv2.GaussianBlur(rng.integers(0, 256, (*source_hw, 3), dtype=np.uint8), (5, 5), 2)
    lb = Letterbox.fit(source_hw, (320, 320))
    ref = np.empty((3, 320, 320), np.float32)
    write_input(resize_for(img, lb), lb, ref, bgr=True)
    letterbox = GpuLetterbox(2, "cpu")
    out = torch.empty((2, 3, 320, 320))
    prescaled = letterbox([resize_for(img, lb), img], [lb, lb], out)
    assert prescaled.shape == (2, 3, 320, 320)
    assert np.array_equal(prescaled[0].numpy(), ref)
    assert np.abs(prescaled[1].numpy() - ref).max() <= 1 / 255 + 1e-6


def test_gpu_letterbox_refuses_mismatched_frames():
    """A frame that is neither the letterbox's source size nor its scaled size is an error."""
    torch = pytest.importorskip("torch")
    from edge_agent.inference.gpu_preprocess import GpuLetterbox

    lb = Letterbox.fit((720, 1280), (320, 320))
    with pytest.raises(ValueError, match="letterbox is for"):
        GpuLetterbox(1, "cpu")([np.zeros((100, 100, 3), np.uint8)], [lb], torch.empty((1, 3, 320, 320)))
    with pytest.raises(ValueError, match="at most 1"):
        GpuLetterbox(1, "cpu")([np.zeros((180, 320, 3), np.uint8)] * 2, [lb, lb], torch.empty((2, 3, 320, 320)))
