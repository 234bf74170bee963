"""The model store: ONNX files and their signed manifests under the state directory, by sha256.

    <root>/blobs/sha256/<hex>          the ONNX bytes, named by their own hash
    <root>/manifests/<hex>.json        the signed-manifest envelope (see `signing`)
    <root>/partial/<hex>.part          a download in progress, preallocated to its full size
    <root>/partial/<hex>.part.json     which byte ranges of it are written and synced
    <root>/active                      the active sha256, one line
    <root>/history.json                every activation and rollback, with time and reason

Every path is built from a validated 64-hex sha256, never from a name that came from outside.
Files other processes read (`active`, `history.json`, manifests, blobs) appear by rename after
fsync, so a crash leaves the old or the new file and never half of one. A blob enters `blobs/`
only after its size and sha256 are checked, so anything found there may be served to peers.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal

from edge_agent.manifest import Manifest
from edge_agent.modelstore.signing import MAX_MANIFEST_BYTES, SignatureError, SignedManifest, TrustedKeys

log = logging.getLogger(__name__)

_HEX64 = re.compile(r"[0-9a-f]{64}")
_READ_BYTES = 1 << 20
HISTORY_SCHEMA = 1
MAX_HISTORY_ENTRIES = 1000
DEFAULT_MAX_BLOB_BYTES = 4 << 30
# The manifest field by which a new version declares that its classes differ from the active
# model's. Until `Manifest` has it, it is read from the signed dict and left out when parsing.
CLASS_CHANGE_FIELD = "class_change"

Action = Literal["activate", "rollback"]


class StoreError(RuntimeError):
    """A store operation that was refused; the message says why."""


class BlobMismatchError(StoreError):
    """Bytes whose size or sha256 differ from what their manifest names."""


def check_sha256(value: str) -> str:
    """`value` if it is a lower-case 64-hex sha256; the only way a name from outside becomes a path."""
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise StoreError(f"not a sha256 (64 lower-case hex digits): {str(value)[:80]!r}")
    return value


def verify_blob(path: Path, size_bytes: int, sha256: str) -> None:
    """Raise BlobMismatchError unless `path` holds exactly `size_bytes` bytes hashing to `sha256`."""
    actual = path.stat().st_size
    if actual != size_bytes:
        raise BlobMismatchError(f"{path.name}: {actual} bytes, manifest says {size_bytes}")
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_READ_BYTES):
            digest.update(block)
    if digest.hexdigest() != sha256:
        raise BlobMismatchError(f"{path.name}: sha256 {digest.hexdigest()}, manifest says {sha256}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write a temp file beside `path`, fsync it, rename it over `path`, fsync the directory."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def manifest_from_signed(signed: SignedManifest) -> Manifest:
    """Parse the signed dict; fields `Manifest` does not know yet (the class-change flag) are left out."""
    data = dict(signed.manifest)
    if CLASS_CHANGE_FIELD not in Manifest.model_fields:
        data.pop(CLASS_CHANGE_FIELD, None)
    try:
        return Manifest(**data)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"invalid manifest: {exc}") from exc


def declares_class_change(signed: SignedManifest) -> bool:
    return signed.manifest.get(CLASS_CHANGE_FIELD) is True


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class StoredModel:
    """One complete store entry: the blob, its parsed manifest, and the envelope that signed it."""

    manifest: Manifest
    signed: SignedManifest
    blob: Path
    manifest_path: Path

    @property
    def sha256(self) -> str:
        return self.manifest.sha256

    @property
    def label(self) -> str:
        return f"{self.manifest.name}@{self.manifest.version} ({self.sha256[:12]})"


@dataclass(frozen=True)
class HistoryEntry:
    time: str
    action: Action
    sha256: str
    name: str
    version: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"time": self.time, "action": self.action, "sha256": self.sha256, "name": self.name,
                "version": self.version, "reason": self.reason}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> HistoryEntry:
        action = doc["action"]
        if action not in ("activate", "rollback"):
            raise StoreError(f"history entry with unknown action {action!r}")
        return cls(str(doc["time"]), action, check_sha256(doc["sha256"]), str(doc["name"]),
                   str(doc["version"]), str(doc["reason"]))


def version_stack(entries: list[HistoryEntry]) -> list[str]:
    """Replay the history: an activation pushes a version, a rollback pops back to the one before.

    So rolling back twice after v1, v2, v3 gives v2 and then v1, instead of bouncing between the
    last two.
    """
    stack: list[str] = []
    for entry in entries:
        if entry.action == "rollback" and stack:
            stack.pop()
        if not stack or stack[-1] != entry.sha256:
            stack.append(entry.sha256)
    return stack


class PartialDownload:
    """A blob being downloaded: a preallocated `.part` file and a sidecar of the finished ranges.

    Ranges are end-exclusive byte intervals, kept merged. Data is fsynced before the sidecar that
    claims it is written, so after a crash the sidecar never claims bytes that are not on disk;
    at worst it forgets the last `persist_every_s` of progress. Thread-safe: several fetch
    workers write disjoint ranges at once. An exclusive lock on the file keeps a second process
    from downloading the same blob into it.
    """

    def __init__(self, part: Path, sha256: str, size_bytes: int, persist_every_s: float = 0.5) -> None:
        self.part = part
        self.sidecar = part.with_name(part.name + ".json")
        self.sha256 = check_sha256(sha256)
        self.size_bytes = size_bytes
        self._persist_every_s = persist_every_s
        self._lock = threading.Lock()
        self._fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise StoreError(f"{sha256[:12]} is already being downloaded by another process") from None
        self._done = self._load_sidecar()
        self.resumed_bytes = self.done_bytes
        if not self._done:
            os.ftruncate(self._fd, 0)
        os.ftruncate(self._fd, size_bytes)
        self._last_persist = time.monotonic()
        self._dirty = False

    def _load_sidecar(self) -> list[list[int]]:
        """The ranges a previous run finished, or [] when there is no usable sidecar."""
        try:
            with self.sidecar.open("rb") as fh:
                doc = json.loads(fh.read(MAX_MANIFEST_BYTES))
            if doc.get("sha256") != self.sha256 or doc.get("size") != self.size_bytes:
                return []
            ranges = [[int(a), int(b)] for a, b in doc["done"]]
        except (OSError, ValueError, KeyError, TypeError):
            return []
        if os.fstat(self._fd).st_size != self.size_bytes or any(
                not 0 <= a < b <= self.size_bytes for a, b in ranges):
            return []
        merged: list[list[int]] = []
        for a, b in sorted(ranges):
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        return merged

    @property
    def done_bytes(self) -> int:
        with self._lock:
            return sum(b - a for a, b in self._done)

    @property
    def complete(self) -> bool:
        with self._lock:
            return self._done == [[0, self.size_bytes]]

    def missing(self) -> list[tuple[int, int]]:
        """The byte ranges still to fetch, end-exclusive."""
        gaps, pos = [], 0
        with self._lock:
            for a, b in self._done:
                if a > pos:
                    gaps.append((pos, a))
                pos = b
        if pos < self.size_bytes:
            gaps.append((pos, self.size_bytes))
        return gaps

    def write(self, offset: int, data: bytes) -> None:
        """Store `data` at `offset` and count it as done; persists the sidecar every so often."""
        end = offset + len(data)
        if offset < 0 or end > self.size_bytes:
            raise StoreError(f"write [{offset}, {end}) outside a {self.size_bytes}-byte blob")
        os.pwrite(self._fd, data, offset)
        with self._lock:
            self._add_range(offset, end)
            self._dirty = True
            due = time.monotonic() - self._last_persist >= self._persist_every_s
        if due:
            self.persist()

    def _add_range(self, a: int, b: int) -> None:
        ranges = [*self._done, [a, b]]
        ranges.sort()
        merged: list[list[int]] = []
        for lo, hi in ranges:
            if merged and lo <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        self._done = merged

    def persist(self) -> None:
        with self._lock:
            if not self._dirty:
                return
            os.fsync(self._fd)
            doc = {"sha256": self.sha256, "size": self.size_bytes, "done": [list(r) for r in self._done]}
            atomic_write(self.sidecar, json.dumps(doc).encode())
            self._last_persist, self._dirty = time.monotonic(), False

    def close(self) -> None:
        if self._fd < 0:
            return
        self.persist()
        os.close(self._fd)  # releases the flock
        self._fd = -1

    def discard(self) -> None:
        """Forget everything downloaded (after a hash mismatch: some peer sent wrong bytes)."""
        with self._lock:
            self._dirty = False
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.part.unlink(missing_ok=True)
        self.sidecar.unlink(missing_ok=True)


class ModelStore:
    """Content-addressed model versions under `root`; see the module docstring for the layout.

    `trusted_keys` None means signatures are not checked (a development store); an empty
    `TrustedKeys` accepts nothing.
    """

    def __init__(self, root: Path, trusted_keys: TrustedKeys | None = None, *,
                 max_blob_bytes: int = DEFAULT_MAX_BLOB_BYTES) -> None:
        self.root = root
        self.trusted_keys = trusted_keys
        self.max_blob_bytes = max_blob_bytes
        self._blobs = root / "blobs" / "sha256"
        self._manifests = root / "manifests"
        self._partial = root / "partial"
        for folder in (self._blobs, self._manifests, self._partial):
            folder.mkdir(parents=True, exist_ok=True)
        self._active_file = root / "active"
        self._history_file = root / "history.json"
        self._lock = threading.Lock()

    # -- paths: only ever from a checked sha256 --------------------------------------------
    def blob_path(self, sha256: str) -> Path:
        return self._blobs / check_sha256(sha256)

    def manifest_path(self, sha256: str) -> Path:
        return self._manifests / f"{check_sha256(sha256)}.json"

    def has_blob(self, sha256: str) -> bool:
        return self.blob_path(sha256).is_file()

    # -- manifests ----------------------------------------------------------------------------
    def check_signed(self, signed: SignedManifest) -> Manifest:
        """Verify the signature (when keys are configured) and the manifest's fields and limits."""
        if self.trusted_keys is not None:
            try:
                self.trusted_keys.verify(signed)
            except SignatureError as exc:
                raise StoreError(f"manifest rejected: {exc}") from exc
        manifest = manifest_from_signed(signed)
        if manifest.size_bytes > self.max_blob_bytes:
            raise StoreError(f"manifest names a {manifest.size_bytes}-byte model, limit "
                             f"{self.max_blob_bytes}")
        return manifest

    def add_manifest(self, signed: SignedManifest) -> Manifest:
        """Keep a checked manifest (a pull stores it before fetching the blob it names)."""
        manifest = self.check_signed(signed)
        atomic_write(self.manifest_path(manifest.sha256), signed.to_json())
        return manifest

    def load_signed(self, sha256: str) -> SignedManifest:
        try:
            return SignedManifest.load(self.manifest_path(sha256))
        except FileNotFoundError:
            raise StoreError(f"no manifest for {sha256[:12]} in the store") from None
        except (OSError, SignatureError) as exc:
            raise StoreError(f"manifest {sha256[:12]}: {exc}") from exc

    def manifest_bytes(self, sha256: str) -> bytes | None:
        """The stored envelope as served to peers, or None."""
        try:
            with self.manifest_path(sha256).open("rb") as fh:
                return fh.read(MAX_MANIFEST_BYTES + 1)[:MAX_MANIFEST_BYTES]
        except FileNotFoundError:
            return None

    def open_blob(self, sha256: str) -> BinaryIO | None:
        """A complete blob opened for reading, or None."""
        try:
            return self.blob_path(sha256).open("rb")
        except FileNotFoundError:
            return None

    # -- entries ------------------------------------------------------------------------------
    def get(self, sha256: str) -> StoredModel:
        """The complete entry for `sha256` (manifest re-checked; the blob's size, not its hash)."""
        signed = self.load_signed(sha256)
        manifest = self.check_signed(signed)
        if manifest.sha256 != sha256:
            raise StoreError(f"manifest file {sha256[:12]} names {manifest.sha256[:12]}")
        blob = self.blob_path(sha256)
        if not blob.is_file():
            raise StoreError(f"{manifest.name}@{manifest.version}: blob {sha256[:12]} not in the store")
        if blob.stat().st_size != manifest.size_bytes:
            raise StoreError(f"blob {sha256[:12]} has the wrong size; the store is damaged")
        return StoredModel(manifest, signed, blob, self.manifest_path(sha256))

    def entries(self) -> list[StoredModel]:
        """Complete entries (blob and manifest), oldest `created` first; broken ones are logged."""
        entries = []
        for path in sorted(self._manifests.glob("*.json")):
            sha = path.stem
            if not _HEX64.fullmatch(sha) or not self.has_blob(sha):
                continue
            try:
                entries.append(self.get(sha))
            except StoreError as exc:
                log.warning("model store: skipping %s: %s", sha[:12], exc)
        return sorted(entries, key=lambda e: (e.manifest.created, e.manifest.name, e.manifest.version))

    def held(self) -> list[str]:
        """The sha256 of every complete entry: what this node can serve and announces."""
        return [e.sha256 for e in self.entries()]

    def resolve(self, prefix: str) -> str:
        """The full sha256 of the one complete entry starting with `prefix` (for the CLI)."""
        if not re.fullmatch(r"[0-9a-f]{4,64}", prefix):
            raise StoreError(f"not a sha256 or a prefix of one (4-64 hex digits): {prefix[:80]!r}")
        matches = [sha for sha in self.held() if sha.startswith(prefix)]
        if len(matches) != 1:
            raise StoreError(f"{prefix!r} matches {len(matches)} models in the store, need exactly one")
        return matches[0]

    def import_model(self, model_path: Path, signed: SignedManifest) -> StoredModel:
        """Copy a local ONNX file in, after checking the manifest and the file's size and sha256."""
        manifest = self.check_signed(signed)
        tmp = self._blobs / f".import-{manifest.sha256}.{secrets.token_hex(4)}.tmp"
        try:
            digest, copied = hashlib.sha256(), 0
            with model_path.open("rb") as src, tmp.open("wb") as dst:
                while block := src.read(_READ_BYTES):
                    copied += len(block)
                    if copied > manifest.size_bytes:
                        raise BlobMismatchError(f"{model_path}: larger than the manifest's "
                                                f"{manifest.size_bytes} bytes")
                    digest.update(block)
                    dst.write(block)
                dst.flush()
                os.fsync(dst.fileno())
            if copied != manifest.size_bytes or digest.hexdigest() != manifest.sha256:
                raise BlobMismatchError(f"{model_path}: {copied} bytes, sha256 {digest.hexdigest()}; "
                                        f"manifest says {manifest.size_bytes}, {manifest.sha256}")
            tmp.replace(self.blob_path(manifest.sha256))
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(self._blobs)
        atomic_write(self.manifest_path(manifest.sha256), signed.to_json())
        log.info("model store: imported %s@%s (%s)", manifest.name, manifest.version, manifest.sha256[:12])
        return self.get(manifest.sha256)

    # -- downloads ----------------------------------------------------------------------------
    def open_partial(self, sha256: str, size_bytes: int, persist_every_s: float = 0.5) -> PartialDownload:
        """Start or resume the download of a blob; refuses sizes over the limit or the free space."""
        if not 0 < size_bytes <= self.max_blob_bytes:
            raise StoreError(f"blob size {size_bytes} outside 1..{self.max_blob_bytes} bytes")
        part = self._partial / f"{check_sha256(sha256)}.part"
        have = part.stat().st_size if part.exists() else 0
        if shutil.disk_usage(self._partial).free + have < size_bytes:
            raise StoreError(f"not enough free space in {self._partial} for {size_bytes} bytes")
        return PartialDownload(part, sha256, size_bytes, persist_every_s)

    def commit_partial(self, partial: PartialDownload) -> Path:
        """Move a finished download into `blobs/` after checking size and sha256; a mismatch discards it."""
        if not partial.complete:
            raise StoreError(f"download of {partial.sha256[:12]} is not complete")
        partial.close()
        try:
            verify_blob(partial.part, partial.size_bytes, partial.sha256)
        except BlobMismatchError:
            partial.discard()
            raise
        target = self.blob_path(partial.sha256)
        partial.part.replace(target)
        _fsync_dir(target.parent)
        partial.sidecar.unlink(missing_ok=True)
        return target

    # -- activation -----------------------------------------------------------------------
    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """One writer of `active` and `history.json` across threads and processes (daemon and CLI)."""
        with self._lock, (self.root / ".lock").open("a") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            yield

    def active(self) -> str | None:
        try:
            text = self._active_file.read_text().strip()
        except FileNotFoundError:
            return None
        return check_sha256(text)

    def active_entry(self) -> HistoryEntry | None:
        """The history entry that made the current version active (its time is the `since`)."""
        active = self.active()
        return next((e for e in reversed(self.history()) if e.sha256 == active), None)

    def history(self) -> list[HistoryEntry]:
        try:
            with self._history_file.open("rb") as fh:
                doc = json.loads(fh.read())
        except FileNotFoundError:
            return []
        except ValueError as exc:
            raise StoreError(f"{self._history_file}: {exc}") from exc
        return [HistoryEntry.from_dict(e) for e in doc.get("entries", [])]

    def _record(self, model: StoredModel, action: Action, reason: str) -> None:
        entries = [*self.history(), HistoryEntry(_now(), action, model.sha256, model.manifest.name,
                                                 model.manifest.version, reason)]
        doc = {"schema": HISTORY_SCHEMA, "entries": [e.to_dict() for e in entries[-MAX_HISTORY_ENTRIES:]]}
        atomic_write(self._history_file, json.dumps(doc, indent=1).encode())
        atomic_write(self._active_file, f"{model.sha256}\n".encode())
        log.info("model store: %s %s (%s)", action, model.label, reason)

    def activate(self, sha256: str, reason: str) -> StoredModel:
        """Make `sha256` the active version and record why; a no-op when it already is."""
        model = self.get(sha256)
        with self._exclusive():
            if self.active() != sha256:
                self._record(model, "activate", reason)
        return model

    def rollback(self, reason: str) -> StoredModel:
        """Go back to the version active before the current one (see `version_stack`)."""
        with self._exclusive():
            stack = version_stack(self.history())
            if len(stack) < 2:
                raise StoreError("no previous version to roll back to")
            model = self.get(stack[-2])
            self._record(model, "rollback", reason)
        return model
