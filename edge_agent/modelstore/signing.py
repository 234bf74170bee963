"""Ed25519 signatures over model manifests, and the envelope that carries one.

What is signed is the manifest as a JSON object, encoded canonically: keys sorted, no whitespace,
UTF-8, no NaN/Infinity, and without a top-level `signature` key. The exact dict that was signed
travels in the envelope, so a verifier never re-derives it from a parsed model: a field that a
newer `Manifest` adds with a default cannot break old signatures.

The envelope is one JSON document, chosen over a detached `.sig` file because the same bytes go
into the store, over the peer API and in the MQTT pull command:

    {"schema": 1, "manifest": {...}, "algorithm": "ed25519", "key_id": "<16 hex>",
     "signature": "<base64 of the 64-byte signature>"}

An unsigned envelope (only for stores configured without trusted keys) has `key_id` and
`signature` set to null. A key id is the first 16 hex digits of the sha256 of the raw 32-byte
public key; it selects the key to verify with and is not itself trusted.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ENVELOPE_SCHEMA = 1
ALGORITHM = "ed25519"
MAX_MANIFEST_BYTES = 1 << 20  # a manifest with calibration records is a few KiB; refuse anything huge
MAX_KEY_FILE_BYTES = 64 << 10
_SIGNATURE_BYTES = 64
_KEY_ID_HEX = 16
_PRIVATE_MODE = 0o600
_PUBLIC_MODE = 0o644  # a public key is meant to be copied to every node


class SignatureError(ValueError):
    """A manifest whose signature is missing, malformed, by an unknown key, or does not match."""


class KeyFileError(ValueError):
    """A key file that cannot be read, or holds something other than an Ed25519 key."""


def canonical_manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers: sorted keys, no whitespace, UTF-8, `signature` left out."""
    body = {k: v for k, v in manifest.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:_KEY_ID_HEX]


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create `path` with `mode` from the start (no window with wider permissions); never overwrite."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    path.chmod(mode)  # the umask may have narrowed the mode given to open


def generate_keypair(private_path: Path, public_path: Path) -> str:
    """Write a new Ed25519 key pair as PEM (private 0600, public 0644); returns its key id.

    Existing files are never overwritten: replacing a fleet key by accident locks every node out
    of new versions.
    """
    for path in (private_path, public_path):
        if path.exists():
            raise FileExistsError(f"{path} exists; refusing to overwrite a key")
    private = Ed25519PrivateKey.generate()
    _write_new(private_path, private.private_bytes(serialization.Encoding.PEM,
                                                   serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()), _PRIVATE_MODE)
    public = private.public_key()
    _write_new(public_path, public.public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo),
               _PUBLIC_MODE)
    return key_id(public)


def _read_key_file(path: Path) -> bytes:
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise KeyFileError(f"{path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"{path}: larger than {MAX_KEY_FILE_BYTES} bytes, not a key file")
    return data


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(_read_key_file(path), password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: not an unencrypted PEM private key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: a {type(key).__name__}, expected an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(_read_key_file(path))
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: not a PEM public key ({exc})") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path}: a {type(key).__name__}, expected an Ed25519 public key")
    return key


@dataclass(frozen=True)
class SignedManifest:
    """A manifest dict exactly as signed, with its signature (None when unsigned)."""

    manifest: dict[str, Any]
    key_id: str | None = None
    signature: bytes | None = None

    @property
    def sha256(self) -> str:
        value = self.manifest.get("sha256")
        if not isinstance(value, str):
            raise SignatureError("manifest has no sha256")
        return value

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": ENVELOPE_SCHEMA,
            "manifest": self.manifest,
            "algorithm": ALGORITHM,
            "key_id": self.key_id,
            "signature": base64.b64encode(self.signature).decode() if self.signature else None,
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False).encode() + b"\n"

    @classmethod
    def from_dict(cls, doc: object) -> SignedManifest:
        """Check the envelope's shape (not the signature: that is `TrustedKeys.verify`)."""
        if not isinstance(doc, dict) or doc.get("schema") != ENVELOPE_SCHEMA:
            raise SignatureError(f"not a signed-manifest envelope (schema {ENVELOPE_SCHEMA})")
        manifest, kid, sig = doc.get("manifest"), doc.get("key_id"), doc.get("signature")
        if not isinstance(manifest, dict):
            raise SignatureError("envelope has no manifest object")
        if doc.get("algorithm") != ALGORITHM:
            raise SignatureError(f"unsupported signature algorithm {doc.get('algorithm')!r}")
        if sig is None and kid is None:
            return cls(manifest)
        if not isinstance(kid, str) or len(kid) != _KEY_ID_HEX or not _is_hex(kid):
            raise SignatureError(f"malformed key_id {kid!r}")
        if not isinstance(sig, str):
            raise SignatureError("malformed signature: expected base64 text")
        try:
            raw = base64.b64decode(sig, validate=True)
        except binascii.Error as exc:
            raise SignatureError(f"malformed signature: {exc}") from exc
        if len(raw) != _SIGNATURE_BYTES:
            raise SignatureError(f"malformed signature: {len(raw)} bytes, expected {_SIGNATURE_BYTES}")
        return cls(manifest, kid, raw)

    @classmethod
    def from_json(cls, data: bytes) -> SignedManifest:
        if len(data) > MAX_MANIFEST_BYTES:
            raise SignatureError(f"manifest document is {len(data)} bytes, limit {MAX_MANIFEST_BYTES}")
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
            raise SignatureError(f"manifest document is not JSON: {exc}") from exc
        return cls.from_dict(doc)

    @classmethod
    def load(cls, path: Path) -> SignedManifest:
        with path.open("rb") as fh:
            return cls.from_json(fh.read(MAX_MANIFEST_BYTES + 1))


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def sign_manifest(manifest: Mapping[str, Any], private_key: Ed25519PrivateKey) -> SignedManifest:
    body = {k: v for k, v in manifest.items() if k != "signature"}
    signature = private_key.sign(canonical_manifest_bytes(body))
    return SignedManifest(body, key_id(private_key.public_key()), signature)


class TrustedKeys:
    """The fleet public keys a node accepts manifests from, by key id."""

    def __init__(self, keys: Iterable[Ed25519PublicKey] = ()) -> None:
        self._keys = {key_id(k): k for k in keys}

    @classmethod
    def from_files(cls, paths: Iterable[Path]) -> TrustedKeys:
        return cls(load_public_key(p) for p in paths)

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(sorted(self._keys))

    def __len__(self) -> int:
        return len(self._keys)

    def verify(self, signed: SignedManifest) -> str:
        """The id of the trusted key that signed `signed`; raises SignatureError otherwise."""
        if signed.signature is None or signed.key_id is None:
            raise SignatureError("manifest is not signed")
        key = self._keys.get(signed.key_id)
        if key is None:
            raise SignatureError(f"manifest signed with unknown key {signed.key_id} "
                                 f"(trusted: {', '.join(self.key_ids) or 'none'})")
        try:
            key.verify(signed.signature, canonical_manifest_bytes(signed.manifest))
        except InvalidSignature:
            raise SignatureError(f"signature by key {signed.key_id} does not match the manifest") from None
        return signed.key_id
