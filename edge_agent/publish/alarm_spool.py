"""A bounded, durable FIFO of alarm messages on disk: written before they are sent, removed once
the broker has acknowledged them, so a broker outage or a restart loses none.

One file per message, named by a zero-padded sequence number, so the directory listing is the
queue's order and acknowledging is an unlink. A message is written to a temporary name, fsynced,
renamed into place and the directory fsynced before `append` returns: after a power cut a
message is either whole under its final name or absent. Each file also carries a magic, its
length and a CRC32, and a file that fails them (torn by a filesystem that reorders writes, or
damaged since) is dropped and counted when the spool opens or reaches it.

Full (by count or by bytes): the oldest messages are dropped to make room, and counted. The
alternative, refusing the newest, would lose an alarm's `end` and leave subscribers with an alarm
that never ends; every message is complete on its own, so one whose `start` was dropped still
tells the whole story. Acknowledging does not fsync the directory: a message whose unlink is lost
in a crash is sent again, and subscribers drop it by its id and seq.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_MAGIC = b"EAS1"
_HEADER = struct.Struct(">4sII")  # magic, payload length, CRC32 of the payload
_SUFFIX = ".alarm"
_TMP_SUFFIX = ".tmp"
_SEQ_DIGITS = 20


@dataclass(frozen=True, slots=True)
class SpooledMessage:
    seq: int
    payload: bytes


class AlarmSpool:
    """Thread-safe; `peek` and `ack` are meant for one consumer, `append` for any number of producers."""

    def __init__(self, directory: Path, *, max_messages: int = 10_000, max_bytes: int = 64 * 1024 * 1024) -> None:
        if max_messages < 1 or max_bytes < _HEADER.size + 1:
            raise ValueError(f"max_messages must be >= 1 and max_bytes >= {_HEADER.size + 1}, "
                             f"got {max_messages} and {max_bytes}")
        self.directory = directory
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._index: deque[tuple[int, int]] = deque()  # (seq, file size), oldest first
        self._bytes = 0
        self.dropped = 0  # oldest messages dropped to make room
        self.corrupt = 0  # files that failed their checks and were discarded
        directory.mkdir(parents=True, exist_ok=True)
        self._next_seq = self._recover() + 1

    def __len__(self) -> int:
        with self._lock:
            return len(self._index)

    @property
    def size_bytes(self) -> int:
        """Bytes on disk, headers included."""
        with self._lock:
            return self._bytes

    def append(self, payload: bytes) -> int:
        """Store `payload` durably; returns its sequence number. Drops the oldest when full."""
        size = _HEADER.size + len(payload)
        if size > self.max_bytes:
            raise ValueError(f"a message of {len(payload)} bytes cannot fit a spool of {self.max_bytes} bytes")
        record = _HEADER.pack(_MAGIC, len(payload), zlib.crc32(payload)) + payload
        with self._lock:
            while self._index and (len(self._index) >= self.max_messages or self._bytes + size > self.max_bytes):
                self._drop_oldest()
            seq = self._next_seq
            self._write(seq, record)
            self._next_seq += 1
            self._index.append((seq, size))
            self._bytes += size
            return seq

    def peek(self) -> SpooledMessage | None:
        """The oldest message not yet acknowledged, or None when the spool is empty."""
        with self._lock:
            while self._index:
                seq, _ = self._index[0]
                payload = _read(self._path(seq))
                if payload is not None:
                    return SpooledMessage(seq, payload)
                log.warning("alarm spool: %s is damaged or gone; skipped", self._path(seq).name)
                self.corrupt += 1
                self._remove_head()
            return None

    def ack(self, seq: int) -> None:
        """Remove message `seq` (delivered). Only the head is ever acknowledged; anything else
        (a message dropped for room while it was being sent) is already gone."""
        with self._lock:
            if self._index and self._index[0][0] == seq:
                self._remove_head()

    def _path(self, seq: int) -> Path:
        return self.directory / f"{seq:0{_SEQ_DIGITS}d}{_SUFFIX}"

    def _write(self, seq: int, record: bytes) -> None:
        final = self._path(seq)
        tmp = final.with_name(f".{final.stem}{_TMP_SUFFIX}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(record)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(final)
        _fsync_dir(self.directory)

    def _drop_oldest(self) -> None:
        if self.dropped == 0 or self.dropped % 1000 == 0:
            log.warning("alarm spool full (%d messages, %d bytes): dropping the oldest (dropped so far: %d)",
                        len(self._index), self._bytes, self.dropped)
        self.dropped += 1
        self._remove_head()

    def _remove_head(self) -> None:
        seq, size = self._index.popleft()
        self._bytes -= size
        self._path(seq).unlink(missing_ok=True)

    def _recover(self) -> int:
        """Rebuild the index from the files a previous run left, dropping temporaries and damaged
        files; returns the highest sequence number found (0 for none), so no name is reused."""
        for tmp in self.directory.glob(f".*{_TMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)  # a write that never reached its rename: never acknowledged
        found = []
        for path in self.directory.glob(f"*{_SUFFIX}"):
            stem = path.name.removesuffix(_SUFFIX)
            if len(stem) == _SEQ_DIGITS and stem.isdigit():
                found.append((int(stem), path))
        for seq, path in sorted(found):
            if _read(path) is None:
                log.warning("alarm spool: discarding damaged %s", path.name)
                self.corrupt += 1
                path.unlink(missing_ok=True)
                continue
            size = path.stat().st_size
            self._index.append((seq, size))
            self._bytes += size
        while self._index and (len(self._index) > self.max_messages or self._bytes > self.max_bytes):
            self._drop_oldest()  # the bounds shrank since the last run
        if self._index:
            log.info("alarm spool: %d undelivered messages from a previous run", len(self._index))
        return max((seq for seq, _ in found), default=0)


def _read(path: Path) -> bytes | None:
    """The payload, or None if the file is missing, short, or fails its magic or CRC."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if len(data) < _HEADER.size:
        return None
    magic, length, crc = _HEADER.unpack_from(data)
    payload = data[_HEADER.size:]
    if magic != _MAGIC or length != len(payload) or zlib.crc32(payload) != crc:
        return None
    return payload


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
