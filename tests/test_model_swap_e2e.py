"""Model versions on a running daemon under live RTSP load: pull from a peer, validated swap at a batch
boundary, rollback by command, unknown-key refusal, automatic rollback on a latency regression."""

import json
import subprocess
import time
from collections import defaultdict

import pytest
from harness import write_config

from edge_agent.config.loader import load_config
from edge_agent.control.model_manager import ModelManager
from edge_agent.daemon import Daemon
from edge_agent.devtools import free_loopback_port
from edge_agent.devtools.mqtt_watch import MqttWatch, Received
from edge_agent.inference.loading import LoadedModel
from edge_agent.manifest import Manifest, manifest_path_for, sha256_file
from edge_agent.modelstore.signing import TrustedKeys, generate_keypair, load_private_key, sign_manifest
from edge_agent.modelstore.store import ModelStore
from edge_agent.p2p.announce import build_pull_command
from edge_agent.p2p.server import PeerServer, ServerSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
PREFIX = "edge/test-node"


def _variant(demo_model, tmp_path, version: str, key_path):
    """The demo model with different bytes (ONNX doc string) and a signed manifest for `version`."""
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(demo_model))
    model.doc_string = f"edge-agent test variant {version}"
    path = tmp_path / f"variant-{version}.onnx"
    onnx.save(model, str(path))
    base = Manifest.load(manifest_path_for(demo_model)).to_dict()
    manifest = {**base, "version": version, "sha256": sha256_file(path), "size_bytes": path.stat().st_size,
                "parent": base["sha256"]}
    return path, sign_manifest(manifest, load_private_key(key_path))


class SlowRunner:
    """A runner whose every call takes 60 ms longer: a regression that appears only in service."""

    def __init__(self, runner) -> None:
        self._runner = runner
        self.inputs, self.outputs = runner.inputs, runner.outputs

    def warmup(self, *args) -> None:
        self._runner.warmup(*args)

    def infer(self, batch):
        time.sleep(0.06)
        return self._runner.infer(batch)

    def close(self) -> None:
        self._runner.close()


def _slow(model: LoadedModel) -> LoadedModel:
    model.detector.runner = SlowRunner(model.detector.runner)
    return model


def _detections(messages: list[Received]) -> list[dict]:
    return [m.json() for m in messages if m.topic.endswith("/detections")]


def _results(messages: list[Received], command: str) -> list[dict]:
    return [m.json() for m in messages if m.topic == f"{PREFIX}/cmd/{command}/result"]


def _publish(broker, topic: str, payload: bytes) -> None:
    subprocess.run(["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-q", "1", "-t", topic, "-s"],
                   input=payload, check=True, timeout=10)


@pytest.fixture
def fleet(tmp_path, demo_model, broker, cameras):
    """Node A (a peer holding v2 and v3) and a running daemon B with a store, both on loopback."""
    key, pub = tmp_path / "fleet.key", tmp_path / "fleet.pub"
    generate_keypair(key, pub)
    token_file = tmp_path / "token"
    token_file.write_text("fleet-secret-token\n")
    store_a = ModelStore(tmp_path / "node-a", TrustedKeys.from_files([pub]))
    variants = {}
    for version in ("1.1.0", "1.2.0"):
        path, signed = _variant(demo_model, tmp_path, version, key)
        store_a.import_model(path, signed)
        variants[version] = signed
    server_a = PeerServer(store_a, ServerSettings(port=0, token=b"fleet-secret-token"))
    server_a.start()
    urls = {name: cameras[name].url(name) for name in ("cam1", "cam2")}
    cfg = write_config(tmp_path / "config.yaml", broker_port=broker.port, cameras=urls)
    doc = cfg.read_text() + (
        f"store:\n  state_dir: {tmp_path / 'node-b'}\n  trusted_keys: [{pub}]\n"
        f"  probation: {{window_s: 60, min_batches: 10, max_latency_factor: 1.5}}\n"
        f"p2p:\n  listen_port: {free_loopback_port()}\n  token_file: {token_file}\n"
        f"  peers: ['{server_a.url}']\n")
    cfg.write_text(doc)
    config = load_config(cfg)
    daemon = Daemon(config)
    manager = ModelManager(daemon, config.store, config.p2p)
    manager.bootstrap(config)
    daemon.model_opener = manager.model_opener
    daemon.on_link_created.append(manager.attach)
    with MqttWatch(broker.host, broker.port, f"{PREFIX}/#") as watch:
        daemon.start()
        manager.start()
        try:
            assert watch.wait_for(lambda m: len(_detections(m)) >= 20, 60)
            yield daemon, manager, watch, variants, tmp_path, key
        finally:
            manager.stop()
            daemon.stop()
            server_a.stop()


def test_pull_swap_rollback_and_probation(fleet, broker, demo_manifest):
    """v2 pulled and swapped at one batch boundary with no frame lost; rollback < 1 s; v3 rolled back
    automatically when its inference time regresses in service."""
    daemon, manager, watch, variants, _tmp, _key = fleet
    _publish(broker, f"{PREFIX}/cmd/model/pull", build_pull_command(variants["1.1.0"]))
    assert watch.wait_for(lambda m: len(_results(m, "model/pull")) >= 1, 90)
    result = _results(watch.snapshot(), "model/pull")[-1]
    assert result["status"] == "applied", result
    assert [s["step"] for s in result["validation"]["steps"]] == ["integrity", "load", "compatibility",
                                                                   "calibration", "latency"]
    swapped_ns = time.monotonic_ns()
    assert watch.wait_for(lambda m: sum(d["model"]["version"] == "1.1.0" for d in _detections(m)) >= 20, 30)

    by_batch: dict[int, set[str]] = defaultdict(set)
    for doc in _detections(watch.snapshot()):
        by_batch[doc["batch"]].add(doc["model"]["version"])
    assert all(len(v) == 1 for v in by_batch.values()), "a batch mixed models"
    last_old = max(b for b, v in by_batch.items() if demo_manifest.version in v)
    first_new = min(b for b, v in by_batch.items() if "1.1.0" in v)
    assert last_old < first_new
    assert all(v == {"1.1.0"} for b, v in by_batch.items() if b >= first_new)
    for camera in ("cam1", "cam2"):
        frames = [d["frame"] for d in _detections(watch.snapshot()) if d["camera"] == camera]
        assert frames == sorted(set(frames)), f"{camera}: frames repeated or reordered across the swap"
    retained = [m for m in watch.snapshot() if m.topic == f"{PREFIX}/model" and m.payload]
    assert json.loads(retained[-1].payload)["active"]["version"] == "1.1.0"

    _publish(broker, f"{PREFIX}/cmd/model/rollback", b"{}")
    assert watch.wait_for(lambda m: len(_results(m, "model/rollback")) >= 1, 30)
    rolled = _results(watch.snapshot(), "model/rollback")[-1]
    assert rolled["status"] == "rolled back"
    assert rolled["version"] == demo_manifest.version
    assert rolled["elapsed_ms"] < 1000
    back_ns = time.monotonic_ns()
    assert watch.wait_for(lambda m: any(x.json()["model"]["version"] == demo_manifest.version for x in m
                                        if x.topic.endswith("/detections") and x.at_ns > back_ns), 20)
    assert swapped_ns < back_ns

    manager._wrap = _slow  # the next version is slower in service than it was in validation
    _publish(broker, f"{PREFIX}/cmd/model/pull", build_pull_command(variants["1.2.0"]))
    assert watch.wait_for(lambda m: any(r.get("version") == "1.2.0" for r in _results(m, "model/pull")), 90)
    assert watch.wait_for(lambda m: len(_results(m, "model/rollback")) >= 2, 60)
    auto = _results(watch.snapshot(), "model/rollback")[-1]
    assert auto["reason"].startswith("probation: inference"), auto
    assert auto["version"] == demo_manifest.version
    assert daemon.model.manifest.version == demo_manifest.version


def test_pull_signed_by_an_unknown_key_is_refused(fleet, broker, demo_model):
    """A manifest signed by a key the node does not trust is rejected before any download."""
    daemon, _manager, watch, _variants, tmp_path, _key = fleet
    rogue_key, rogue_pub = tmp_path / "rogue.key", tmp_path / "rogue.pub"
    generate_keypair(rogue_key, rogue_pub)
    rogue_dir = tmp_path / "rogue"
    rogue_dir.mkdir()
    _path, signed = _variant(demo_model, rogue_dir, "6.6.6", rogue_key)
    before = daemon.model.manifest.sha256
    _publish(broker, f"{PREFIX}/cmd/model/pull", build_pull_command(signed))
    assert watch.wait_for(lambda m: len(_results(m, "model/pull")) >= 1, 30)
    result = _results(watch.snapshot(), "model/pull")[-1]
    assert result["status"] == "rejected"
    assert "key" in result["reason"].lower()
    assert daemon.model.manifest.sha256 == before
    assert not any((tmp_path / "node-b" / "models" / "blobs" / "sha256").glob(signed.sha256))
