"""Candidate validation on the shipped model: each step passes on it, and each can fail for its reason.

Expectations come from the shipped manifest itself, so the tests hold for whichever demo model is
in `models/`. Latency is decided by an injected probe, never by the clock.
"""

import shutil

import numpy as np
import pytest

from edge_agent.modelstore.signing import SignedManifest, TrustedKeys, generate_keypair, load_private_key, sign_manifest
from edge_agent.modelstore.store import StoredModel, manifest_from_signed
from edge_agent.modelstore.validation import ValidationSettings, interleaved_latency, validate_candidate

ALL_STEPS = ["integrity", "load", "compatibility", "calibration", "latency"]
SETTINGS = ValidationSettings(runner_options={"threads": 1})


def equal_latency(*_):
    return 10.0, 10.0


@pytest.fixture(scope="module")
def signer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    generate_keypair(folder / "k", folder / "p")
    return load_private_key(folder / "k"), TrustedKeys.from_files([folder / "p"])


def entry(blob, doc, key):
    """A store entry as `ModelStore.get` returns one, for a manifest the store would hold for `blob`."""
    signed = sign_manifest(doc, key) if key is not None else SignedManifest(doc)
    return StoredModel(manifest_from_signed(signed), signed, blob, blob.with_suffix(".json"))


@pytest.fixture(scope="module")
def active(tmp_path_factory, demo_model, demo_manifest, signer):
    """The shipped model as a store holds it: a copy named by its sha256."""
    blob = tmp_path_factory.mktemp("blobs") / demo_manifest.sha256
    shutil.copyfile(demo_model, blob)
    return entry(blob, demo_manifest.to_dict(), signer[0])


def validate(candidate, signer, calibration_dir, active, probe=equal_latency, **kwargs):
    return validate_candidate(candidate, trusted_keys=signer[1], calibration_dir=calibration_dir, active=active,
                              settings=SETTINGS, latency_probe=probe, **kwargs)


def test_the_shipped_model_passes_every_step(signer, calibration_dir, active):
    """Against itself as the active model: all five steps pass, and the loaded model comes back."""
    report = validate(active, signer, calibration_dir, active, keep_loaded=True)
    assert [s.step for s in report.steps] == ALL_STEPS
    assert report.ok, report.to_dict()
    assert report.reason == "passed"
    assert report.model is not None
    assert report.model.manifest == active.manifest
    report.model.detector.runner.close()


def test_changed_expected_detections_fail_at_calibration(signer, calibration_dir, active, demo_manifest):
    """One expectation moved (or, for a model that detects nothing, invented) and calibration fails."""
    doc = demo_manifest.to_dict()
    images = [dict(e) for e in doc["calibration"]["images"]]
    target = next((e for e in images if e["expected"]), images[0])
    if target["expected"]:
        moved = dict(target["expected"][0])
        moved["box"] = [v + 40 for v in moved["box"]]
        target["expected"] = [moved, *target["expected"][1:]]
    else:
        target["expected"] = [{"class_id": 0, "box": [10.0, 10.0, 60.0, 60.0], "confidence": 0.9}]
    doc["calibration"] = {**doc["calibration"], "images": images}
    report = validate(entry(active.blob, doc, signer[0]), signer, calibration_dir, active)
    assert not report.ok
    assert report.failed.step == "calibration"
    assert target["file"] in report.failed.reason
    assert [s.step for s in report.steps] == ALL_STEPS[:4]


def _renamed(demo_manifest, **extra):
    doc = demo_manifest.to_dict()
    doc["class_names"] = [f"{name}-v2" for name in doc["class_names"]]
    return {**doc, **extra}


def test_a_class_change_must_be_declared(signer, calibration_dir, active, demo_manifest):
    """Other class names than the active model's: rejected, unless the manifest says class_change."""
    report = validate(entry(active.blob, _renamed(demo_manifest), signer[0]), signer, calibration_dir, active)
    assert report.failed.step == "compatibility"
    assert "class_change" in report.failed.reason
    declared = validate(entry(active.blob, _renamed(demo_manifest, class_change=True), signer[0]),
                        signer, calibration_dir, active)
    assert declared.ok, declared.to_dict()
    assert "declared class change" in declared.steps[2].reason


def test_class_names_must_fit_the_output(signer, calibration_dir, active, demo_manifest):
    """A manifest naming one class more than the model outputs is incompatible."""
    doc = {**demo_manifest.to_dict(), "class_names": [*demo_manifest.class_names, "extra"], "class_change": True}
    report = validate(entry(active.blob, doc, signer[0]), signer, calibration_dir, active)
    assert report.failed.step == "compatibility"
    assert "output shape" in report.failed.reason


@pytest.mark.parametrize(("candidate_ms", "ok"), [(15.0, True), (15.1, False), (5.0, True)])
def test_latency_limit_is_one_and_a_half_times_the_active(signer, calibration_dir, active, candidate_ms, ok):
    report = validate(active, signer, calibration_dir, active, probe=lambda *_: (candidate_ms, 10.0))
    assert report.ok is ok
    assert report.steps[-1].step == "latency"
    if not ok:
        assert "too slow" in report.reason


def test_the_probe_gets_both_models_at_their_input_sizes(signer, calibration_dir, active, demo_manifest):
    """The default probe runs; an injected one sees two distinct runners and each model's input size."""
    seen = []

    def probe(candidate, candidate_hw, active_runner, active_hw):
        seen.append((candidate is not active_runner, candidate_hw, active_hw))
        return interleaved_latency(2)(candidate, candidate_hw, active_runner, active_hw)

    report = validate(active, signer, calibration_dir, active, probe=probe)
    assert report.steps[-1].step == "latency"
    hw = tuple(demo_manifest.input_size)
    assert seen == [(True, hw, hw)]


def test_without_an_active_model_there_is_nothing_to_compare(signer, calibration_dir, active):
    report = validate(active, signer, calibration_dir, None)
    assert report.ok
    assert report.steps[-1].reason == "no active model to compare with"


def test_a_tampered_blob_fails_integrity_before_loading(tmp_path, signer, calibration_dir, active, demo_manifest):
    blob = tmp_path / demo_manifest.sha256
    shutil.copyfile(active.blob, blob)  # the same name, other bytes
    data = bytearray(blob.read_bytes())
    data[-100] ^= 0xFF
    blob.write_bytes(bytes(data))
    report = validate(entry(blob, demo_manifest.to_dict(), signer[0]), signer, calibration_dir, active)
    assert [s.step for s in report.steps] == ["integrity"]
    assert "sha256" in report.reason


def test_an_unknown_signer_fails_integrity(tmp_path, signer, calibration_dir, active, demo_manifest):
    generate_keypair(tmp_path / "k", tmp_path / "p")
    candidate = entry(active.blob, demo_manifest.to_dict(), load_private_key(tmp_path / "k"))
    report = validate(candidate, signer, calibration_dir, active)
    assert report.failed.step == "integrity"
    assert "unknown key" in report.failed.reason


def test_bytes_that_are_not_a_model_fail_to_load(tmp_path, signer, calibration_dir, active, demo_manifest):
    """A blob that matches its manifest but is no ONNX graph is rejected at load, with the backend's reason."""
    import hashlib

    junk = np.random.default_rng(0).bytes(4096)
    blob = tmp_path / hashlib.sha256(junk).hexdigest()
    blob.write_bytes(junk)
    doc = {**demo_manifest.to_dict(), "sha256": blob.name, "size_bytes": len(junk)}
    report = validate(entry(blob, doc, signer[0]), signer, calibration_dir, active)
    assert report.failed.step == "load"
    assert "RunnerError" in report.failed.reason


def test_calibration_file_names_cannot_leave_the_folder(signer, calibration_dir, active, demo_manifest):
    doc = demo_manifest.to_dict()
    first = {**doc["calibration"]["images"][0], "file": "../demo-parts.onnx"}
    doc["calibration"] = {**doc["calibration"], "images": [first]}
    report = validate(entry(active.blob, doc, signer[0]), signer, calibration_dir, active)
    assert report.failed.step == "calibration"
    assert "plain file name" in report.failed.reason


def test_report_serialises_for_the_result_topic(signer, calibration_dir, active):
    report = validate(active, signer, calibration_dir, active, probe=lambda *_: (99.0, 10.0))
    doc = report.to_dict()
    assert doc["ok"] is False
    assert doc["reason"].startswith("latency: too slow")
    assert [s["step"] for s in doc["steps"]] == ALL_STEPS
