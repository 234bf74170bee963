"""The content-addressed model store: import, activation history, partial downloads, and its CLI."""

import hashlib
import json
import shutil

import pytest

from edge_agent.commands import model_store as cli
from edge_agent.manifest import manifest_path_for
from edge_agent.modelstore.signing import SignedManifest, TrustedKeys, generate_keypair, load_private_key, sign_manifest
from edge_agent.modelstore.store import (
    BlobMismatchError,
    ModelStore,
    StoreError,
    verify_blob,
    version_stack,
)


@pytest.fixture
def keys(tmp_path):
    private, public = tmp_path / "keys" / "fleet.key", tmp_path / "keys" / "fleet.pub"
    private.parent.mkdir()
    generate_keypair(private, public)
    return load_private_key(private), TrustedKeys.from_files([public]), private, public


def fake_version(folder, demo_manifest, key, version, payload=None):
    """A small stand-in blob with a signed manifest (the store never loads what it stores)."""
    payload = payload if payload is not None else f"model {version}".encode() * 1000
    path = folder / f"m-{version}.onnx"
    path.write_bytes(payload)
    doc = {**demo_manifest.to_dict(), "version": version, "size_bytes": len(payload),
           "sha256": hashlib.sha256(payload).hexdigest()}
    return path, sign_manifest(doc, key)


def test_import_keeps_the_blob_under_its_hash(tmp_path, keys, demo_model, demo_manifest):
    """The shipped model goes in under blobs/sha256/<hex>, its envelope under manifests/<hex>.json."""
    key, trusted, _, _ = keys
    store = ModelStore(tmp_path / "store", trusted)
    entry = store.import_model(demo_model, sign_manifest(demo_manifest.to_dict(), key))
    assert entry.blob == tmp_path / "store" / "blobs" / "sha256" / demo_manifest.sha256
    assert entry.manifest == demo_manifest
    verify_blob(entry.blob, demo_manifest.size_bytes, demo_manifest.sha256)
    assert SignedManifest.load(store.manifest_path(demo_manifest.sha256)) == entry.signed
    assert [e.sha256 for e in store.entries()] == [demo_manifest.sha256] == store.held()


@pytest.mark.parametrize("damage", ["flip", "truncate", "extend"])
def test_import_refuses_a_file_that_is_not_the_manifests(tmp_path, keys, demo_manifest, damage):
    """Wrong bytes, too few or too many: refused, and nothing is left in the store."""
    key, trusted, _, _ = keys
    path, signed = fake_version(tmp_path, demo_manifest, key, "1.0")
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[10] ^= 1
    elif damage == "truncate":
        data = data[:-1]
    else:
        data += b"x"
    path.write_bytes(bytes(data))
    store = ModelStore(tmp_path / "store", trusted)
    with pytest.raises(BlobMismatchError):
        store.import_model(path, signed)
    assert list((tmp_path / "store" / "blobs" / "sha256").iterdir()) == []
    assert list((tmp_path / "store" / "manifests").iterdir()) == []


def test_import_checks_signatures_when_keys_are_configured(tmp_path, keys, demo_manifest):
    """Unsigned or signed by a stranger: refused. A store without keys accepts unsigned (development)."""
    key, trusted, _, _ = keys
    path, signed = fake_version(tmp_path, demo_manifest, key, "1.0")
    store = ModelStore(tmp_path / "store", trusted)
    with pytest.raises(StoreError, match="not signed"):
        store.import_model(path, SignedManifest(signed.manifest))
    stranger_dir = tmp_path / "stranger"
    stranger_dir.mkdir()
    generate_keypair(stranger_dir / "k", stranger_dir / "p")
    with pytest.raises(StoreError, match="unknown key"):
        store.import_model(path, sign_manifest(signed.manifest, load_private_key(stranger_dir / "k")))
    dev = ModelStore(tmp_path / "dev", trusted_keys=None)
    assert dev.import_model(path, SignedManifest(signed.manifest)).signed.signature is None


def test_manifest_beyond_the_size_limit_is_refused(tmp_path, keys, demo_manifest):
    key, trusted, _, _ = keys
    _, signed = fake_version(tmp_path, demo_manifest, key, "1.0")
    store = ModelStore(tmp_path / "store", trusted, max_blob_bytes=100)
    with pytest.raises(StoreError, match="limit"):
        store.add_manifest(signed)


@pytest.mark.parametrize("name", ["../../etc/passwd", "A" * 64, "a" * 63, "a" * 65, "", "a" * 63 + "/"])
def test_paths_come_only_from_a_sha256(tmp_path, name):
    store = ModelStore(tmp_path / "store")
    with pytest.raises(StoreError, match="sha256"):
        store.blob_path(name)
    with pytest.raises(StoreError, match="sha256"):
        store.manifest_path(name)


def test_activate_and_rollback_walk_the_history(tmp_path, keys, demo_manifest):
    """v1, v2, v3 activated; rollback gives v2, then v1, then refuses. Every step is recorded."""
    key, trusted, _, _ = keys
    store = ModelStore(tmp_path / "store", trusted)
    shas = []
    for version in ("1", "2", "3"):
        path, signed = fake_version(tmp_path, demo_manifest, key, version)
        shas.append(store.import_model(path, signed).sha256)
    assert store.active() is None
    for sha in shas:
        store.activate(sha, reason=f"deploy {sha[:6]}")
    store.activate(shas[2], reason="again")  # already active: no new entry
    assert store.active() == shas[2]
    assert store.rollback("latency regression").sha256 == shas[1]
    assert store.rollback("by hand").sha256 == shas[0]
    with pytest.raises(StoreError, match="no previous version"):
        store.rollback("once more")
    reopened = ModelStore(tmp_path / "store", trusted)
    assert reopened.active() == shas[0]
    history = reopened.history()
    assert [(h.action, h.sha256) for h in history] == [
        ("activate", shas[0]), ("activate", shas[1]), ("activate", shas[2]),
        ("rollback", shas[1]), ("rollback", shas[0])]
    assert history[3].reason == "latency regression"
    assert history[3].version == "2"
    assert reopened.active_entry() == history[4]
    assert not [p for p in (tmp_path / "store").iterdir() if p.name.endswith(".tmp")]


def test_rollback_after_a_new_activation_goes_to_the_one_before_it(tmp_path, keys, demo_manifest):
    """v1, v2, rollback (v1), v3: rollback now gives v1, the version active before v3."""
    key, trusted, _, _ = keys
    store = ModelStore(tmp_path / "store", trusted)
    v = [store.import_model(*fake_version(tmp_path, demo_manifest, key, n)).sha256 for n in "123"]
    store.activate(v[0], "a")
    store.activate(v[1], "b")
    store.rollback("c")
    store.activate(v[2], "d")
    assert version_stack(store.history()) == [v[0], v[2]]
    assert store.rollback("e").sha256 == v[0]


def test_resolve_accepts_a_unique_prefix_only(tmp_path, keys, demo_manifest):
    key, trusted, _, _ = keys
    store = ModelStore(tmp_path / "store", trusted)
    sha = store.import_model(*fake_version(tmp_path, demo_manifest, key, "1")).sha256
    assert store.resolve(sha[:8]) == sha
    for bad in ("zz", "../x", "abc"):
        with pytest.raises(StoreError):
            store.resolve(bad)


def _blob(size):
    data = bytes(range(256)) * (size // 256)
    return data, hashlib.sha256(data).hexdigest()


def test_partial_download_resumes_from_its_sidecar(tmp_path):
    """Ranges written before a restart are kept; only the gaps are missing; the whole commits."""
    data, sha = _blob(64 * 1024)
    store = ModelStore(tmp_path / "store")
    partial = store.open_partial(sha, len(data), persist_every_s=0)
    partial.write(0, data[:1000])
    partial.write(5000, data[5000:9000])
    partial.write(1000, data[1000:2000])
    partial.close()
    sidecar = json.loads(partial.sidecar.read_text())
    assert sidecar["done"] == [[0, 2000], [5000, 9000]]

    resumed = store.open_partial(sha, len(data))
    assert resumed.resumed_bytes == 6000
    assert resumed.missing() == [(2000, 5000), (9000, len(data))]
    for start, end in resumed.missing():
        resumed.write(start, data[start:end])
    assert resumed.complete
    blob = store.commit_partial(resumed)
    assert blob.read_bytes() == data
    assert not partial.part.exists()
    assert not partial.sidecar.exists()


def test_a_damaged_sidecar_means_starting_over(tmp_path):
    data, sha = _blob(8192)
    store = ModelStore(tmp_path / "store")
    partial = store.open_partial(sha, len(data), persist_every_s=0)
    partial.write(0, data[:4096])
    partial.close()
    partial.sidecar.write_text('{"sha256": "' + sha + '", "size": 8192, "done": [[0, 99999]]}')
    again = store.open_partial(sha, len(data))
    assert again.resumed_bytes == 0
    assert again.missing() == [(0, len(data))]
    again.close()


def test_a_download_is_owned_by_one_process(tmp_path):
    """A second open of the same download is refused while the first holds it."""
    data, sha = _blob(4096)
    store = ModelStore(tmp_path / "store")
    first = store.open_partial(sha, len(data))
    with pytest.raises(StoreError, match="already being downloaded"):
        store.open_partial(sha, len(data))
    first.close()
    store.open_partial(sha, len(data)).close()


def test_wrong_bytes_are_discarded_at_commit(tmp_path):
    """A finished download whose hash does not match never reaches blobs/ and is deleted."""
    data, sha = _blob(4096)
    store = ModelStore(tmp_path / "store")
    partial = store.open_partial(sha, len(data))
    partial.write(0, b"\0" * len(data))
    with pytest.raises(BlobMismatchError, match="sha256"):
        store.commit_partial(partial)
    assert not store.has_blob(sha)
    assert not partial.part.exists()
    with pytest.raises(StoreError, match="outside"):
        store.open_partial(sha, len(data)).write(4000, b"x" * 200)


def test_cli_keygen_sign_import_list_activate_rollback(tmp_path, capsys, demo_model, demo_manifest):
    """The operator's path, in process: a key, a signed manifest, an import, activation and rollback."""
    models = tmp_path / "models"
    models.mkdir()
    model = models / demo_model.name
    shutil.copyfile(demo_model, model)
    shutil.copyfile(manifest_path_for(demo_model), manifest_path_for(model))
    key, pub = tmp_path / "fleet.key", tmp_path / "fleet.pub"
    store = ["--store", str(tmp_path / "store"), "--trusted-key", str(pub)]
    assert cli.main(["keygen", "--private-key", str(key), "--public-key", str(pub)]) == 0
    assert cli.main(["sign", str(manifest_path_for(model)), "--key", str(key), "--model", str(model)]) == 0
    assert (models / "demo-parts.manifest.signed.json").exists()
    assert cli.main(["import", *store, str(model)]) == 0
    second, signed = fake_version(tmp_path, demo_manifest, load_private_key(key), "2.0")
    envelope = tmp_path / "second.signed.json"
    envelope.write_bytes(signed.to_json())
    assert cli.main(["import", *store, str(second), "--manifest", str(envelope)]) == 0
    assert cli.main(["activate", *store, demo_manifest.sha256[:10]]) == 0
    assert cli.main(["activate", *store, signed.sha256]) == 0
    capsys.readouterr()
    assert cli.main(["list", *store, "--json"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {(e["version"], e["active"]) for e in listed} == {(demo_manifest.version, False), ("2.0", True)}
    assert cli.main(["rollback", *store]) == 0
    assert ModelStore(tmp_path / "store").active() == demo_manifest.sha256
    assert cli.main(["rollback", *store]) == 1
    assert "no previous version" in capsys.readouterr().err


def test_cli_import_without_keys_is_refused(tmp_path, capsys, demo_model):
    """Import needs --trusted-key, or an explicit --no-signatures for a development store."""
    assert cli.main(["import", "--store", str(tmp_path / "s"), str(demo_model)]) == 1
    assert "--trusted-key" in capsys.readouterr().err
    assert cli.main(["import", "--store", str(tmp_path / "s"), "--no-signatures", str(demo_model)]) == 0
    assert list((tmp_path / "s" / "blobs" / "sha256").iterdir())
