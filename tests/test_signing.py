"""Manifest signatures: key files, the canonical encoding, the envelope, and what verification refuses."""

import base64
import json
import stat

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.modelstore.signing import (
    KeyFileError,
    SignatureError,
    SignedManifest,
    TrustedKeys,
    canonical_manifest_bytes,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
    sign_manifest,
)


@pytest.fixture
def keypair(tmp_path):
    private, public = tmp_path / "fleet.key", tmp_path / "fleet.pub"
    kid = generate_keypair(private, public)
    return private, public, kid


def test_keygen_writes_a_private_key_only_its_owner_can_read(keypair):
    """The private key is 0600 from creation; the key id is 16 hex digits of the public key's hash."""
    private, public, kid = keypair
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    assert private.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert len(kid) == 16
    assert key_id(load_public_key(public)) == kid == key_id(load_private_key(private).public_key())


def test_keygen_never_overwrites_a_key(keypair):
    """A second keygen onto the same files fails and leaves the first key in place."""
    private, public, _ = keypair
    before = private.read_bytes()
    with pytest.raises(FileExistsError, match="refusing"):
        generate_keypair(private, public)
    assert private.read_bytes() == before


def test_loading_a_key_of_the_wrong_kind_is_an_error(tmp_path, keypair):
    """A public key where a private one belongs, or a non-key file, is named as such."""
    _, public, _ = keypair
    with pytest.raises(KeyFileError, match="private key"):
        load_private_key(public)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key")
    with pytest.raises(KeyFileError, match="not a PEM public key"):
        load_public_key(junk)


@pytest.mark.parametrize(("a", "b"), [
    ({"b": 1, "a": [1, 2], "c": {"y": 1, "x": 2}}, {"c": {"x": 2, "y": 1}, "a": [1, 2], "b": 1}),
    ({"name": "caf\u00e9", "v": 1.5}, {"v": 1.5, "name": "caf\u00e9"}),
    ({"a": 1}, {"a": 1, "signature": "ignored"}),
])
def test_canonical_encoding_ignores_key_order_and_the_signature_field(a, b):
    """Sorted keys, no whitespace, UTF-8, and no `signature` key: equal dicts give equal bytes."""
    assert canonical_manifest_bytes(a) == canonical_manifest_bytes(b)
    assert b" " not in canonical_manifest_bytes(a)


def test_canonical_encoding_is_utf8_without_escapes():
    assert canonical_manifest_bytes({"n": "\u00e9"}) == '{"n":"\u00e9"}'.encode()


def test_signed_manifest_round_trips_and_verifies(keypair, demo_manifest):
    """Sign, serialise, parse, verify: the envelope carries the manifest and names the key."""
    private, public, kid = keypair
    signed = sign_manifest(demo_manifest.to_dict(), load_private_key(private))
    again = SignedManifest.from_json(signed.to_json())
    assert again == signed
    assert again.key_id == kid
    assert again.sha256 == demo_manifest.sha256
    assert TrustedKeys.from_files([public]).verify(again) == kid


def _tampered(signed: SignedManifest, **changes) -> SignedManifest:
    return SignedManifest({**signed.manifest, **changes}, signed.key_id, signed.signature)


def test_verification_refusals(keypair, demo_manifest):
    """Changed manifest, unknown key, no signature, and a forged key id are each refused with a reason."""
    private, public, _ = keypair
    trusted = TrustedKeys.from_files([public])
    signed = sign_manifest(demo_manifest.to_dict(), load_private_key(private))
    with pytest.raises(SignatureError, match="does not match"):
        trusted.verify(_tampered(signed, version="9.9.9"))
    stranger = sign_manifest(demo_manifest.to_dict(), Ed25519PrivateKey.generate())
    with pytest.raises(SignatureError, match="unknown key"):
        trusted.verify(stranger)
    with pytest.raises(SignatureError, match="not signed"):
        trusted.verify(SignedManifest(demo_manifest.to_dict()))
    # A stranger's signature presented under the trusted key's id still fails.
    forged = SignedManifest(stranger.manifest, signed.key_id, stranger.signature)
    with pytest.raises(SignatureError, match="does not match"):
        trusted.verify(forged)
    with pytest.raises(SignatureError, match="unknown key"):
        TrustedKeys().verify(signed)


@pytest.mark.parametrize(("change", "message"), [
    ({"schema": 2}, "envelope"),
    ({"algorithm": "rsa"}, "algorithm"),
    ({"key_id": "../../etc"}, "key_id"),
    ({"signature": "!!!"}, "malformed signature"),
    ({"signature": base64.b64encode(b"short").decode()}, "5 bytes"),
    ({"manifest": []}, "manifest object"),
])
def test_malformed_envelopes_are_refused(keypair, demo_manifest, change, message):
    private, _, _ = keypair
    doc = {**sign_manifest(demo_manifest.to_dict(), load_private_key(private)).to_dict(), **change}
    with pytest.raises(SignatureError, match=message):
        SignedManifest.from_json(json.dumps(doc).encode())


def test_oversized_or_non_json_documents_are_refused():
    """More than 1 MiB is refused before parsing; so is anything that is not JSON."""
    with pytest.raises(SignatureError, match="limit"):
        SignedManifest.from_json(b" " * ((1 << 20) + 1))
    with pytest.raises(SignatureError, match="not JSON"):
        SignedManifest.from_json(b"\x80\x04pickle")
