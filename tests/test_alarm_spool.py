"""The on-disk alarm spool: FIFO order, durability across re-opening, damaged files, bounds, threads."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from edge_agent.publish.alarm_spool import AlarmSpool


def _drain(spool: AlarmSpool) -> list[bytes]:
    out = []
    while (head := spool.peek()) is not None:
        out.append(head.payload)
        spool.ack(head.seq)
    return out


def test_messages_come_out_in_order_and_once(tmp_path: Path):
    """peek returns the oldest until it is acknowledged; ack removes exactly it."""
    spool = AlarmSpool(tmp_path)
    for k in range(5):
        spool.append(f"m{k}".encode())
    head = spool.peek()
    assert head is not None
    assert spool.peek() == head  # not acknowledged: still the head
    assert _drain(spool) == [b"m0", b"m1", b"m2", b"m3", b"m4"]
    assert (len(spool), spool.size_bytes, spool.peek()) == (0, 0, None)
    assert list(tmp_path.iterdir()) == []


def test_unacknowledged_messages_survive_reopening(tmp_path: Path):
    """A new spool on the same folder (a restarted daemon) holds what was left, in order, and
    numbers new messages after them."""
    first = AlarmSpool(tmp_path)
    seqs = [first.append(f"m{k}".encode()) for k in range(3)]
    first.ack(seqs[0])
    second = AlarmSpool(tmp_path)
    assert second.append(b"m3") == seqs[-1] + 1
    assert _drain(second) == [b"m1", b"m2", b"m3"]


def test_a_torn_or_damaged_record_is_dropped_and_counted(tmp_path: Path):
    """After a crash: a half-written temporary is ignored, a truncated or corrupted file is dropped,
    the intact ones are kept, and numbering continues after the highest."""
    spool = AlarmSpool(tmp_path)
    for k in range(3):
        spool.append(f"message {k}".encode())
    files = sorted(tmp_path.glob("*.alarm"))
    files[1].write_bytes(files[1].read_bytes()[:-3])  # torn: shorter than its header says
    (tmp_path / ".00000000000000000004.tmp").write_bytes(b"EAS1\x00")  # a write that never got renamed
    damaged = bytearray(files[2].read_bytes())
    damaged[-1] ^= 0xFF  # CRC mismatch
    files[2].write_bytes(bytes(damaged))
    reopened = AlarmSpool(tmp_path)
    assert reopened.corrupt == 2
    assert reopened.append(b"after") == 4
    assert _drain(reopened) == [b"message 0", b"after"]
    assert list(tmp_path.iterdir()) == []


def test_a_file_damaged_while_open_is_skipped(tmp_path: Path):
    """A message file that goes missing under a running spool is skipped, not fatal."""
    spool = AlarmSpool(tmp_path)
    spool.append(b"a")
    spool.append(b"b")
    min(tmp_path.glob("*.alarm")).unlink()
    assert _drain(spool) == [b"b"]
    assert spool.corrupt == 1


def test_full_by_count_drops_the_oldest(tmp_path: Path):
    """At max_messages the oldest goes to make room for the newest, and is counted."""
    spool = AlarmSpool(tmp_path, max_messages=3)
    for k in range(5):
        spool.append(f"m{k}".encode())
    assert (len(spool), spool.dropped) == (3, 2)
    assert _drain(spool) == [b"m2", b"m3", b"m4"]


def test_full_by_bytes_drops_the_oldest(tmp_path: Path):
    """The byte bound counts headers too; it is never exceeded on disk."""
    spool = AlarmSpool(tmp_path, max_bytes=100)
    for k in range(6):
        spool.append(bytes([65 + k]) * 30)  # 42 bytes with the header: two fit
        assert spool.size_bytes <= 100
        assert sum(p.stat().st_size for p in tmp_path.iterdir()) == spool.size_bytes
    assert spool.dropped == 4
    assert _drain(spool) == [b"E" * 30, b"F" * 30]


def test_a_message_larger_than_the_spool_is_refused(tmp_path: Path):
    """Nothing is dropped for a message that could never fit."""
    spool = AlarmSpool(tmp_path, max_bytes=64)
    spool.append(b"keep")
    with pytest.raises(ValueError, match="cannot fit"):
        spool.append(b"x" * 100)
    assert _drain(spool) == [b"keep"]


def test_reopening_with_smaller_bounds_drops_the_oldest(tmp_path: Path):
    """Bounds lowered in the config apply to what a previous run left."""
    spool = AlarmSpool(tmp_path)
    for k in range(4):
        spool.append(f"m{k}".encode())
    smaller = AlarmSpool(tmp_path, max_messages=2)
    assert smaller.dropped == 2
    assert _drain(smaller) == [b"m2", b"m3"]


def test_acknowledging_a_dropped_message_is_harmless(tmp_path: Path):
    """The head being sent may be dropped for room meanwhile; its late ack removes nothing else."""
    spool = AlarmSpool(tmp_path, max_messages=2)
    spool.append(b"a")
    head = spool.peek()
    assert head is not None
    spool.append(b"b")
    spool.append(b"c")  # drops "a", the head in flight
    spool.ack(head.seq)
    assert _drain(spool) == [b"b", b"c"]


def test_each_append_syncs_the_file_and_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Durable on return: the data and the rename are both fsynced."""
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append("dir" if Path(f"/proc/self/fd/{fd}").is_dir() else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    AlarmSpool(tmp_path).append(b"x")
    assert synced == ["file", "dir"]


def test_concurrent_producers_and_one_consumer(tmp_path: Path):
    """Four threads append while one drains: every message arrives once, each producer's in order."""
    spool = AlarmSpool(tmp_path)
    producers, per_producer = 4, 25
    done = threading.Event()
    received: list[bytes] = []

    def consume() -> None:
        while not (done.is_set() and len(spool) == 0):
            head = spool.peek()
            if head is None:
                done.wait(0.001)  # poll gently: the producers are fsyncing
                continue
            received.append(head.payload)
            spool.ack(head.seq)

    def produce(p: int) -> None:
        for k in range(per_producer):
            spool.append(f"{p}:{k}".encode())

    consumer = threading.Thread(target=consume)
    consumer.start()
    threads = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    consumer.join(timeout=30)
    assert len(received) == len(set(received)) == producers * per_producer
    for p in range(producers):
        mine = [int(m.split(b":")[1]) for m in received if m.startswith(f"{p}:".encode())]
        assert mine == list(range(per_producer))
