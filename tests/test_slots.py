"""Latest-frame slots and cross-camera batch collection (invariants, no timings)."""

import threading
from collections import Counter

import numpy as np
import pytest

from edge_agent.batching.slots import FrameSlots
from edge_agent.frame import Frame

# A wait this long would time the test out: passing means the batch closed for another reason.
NEVER_MS = 60_000


def _frame(camera: str, seq: int) -> Frame:
    return Frame(camera, seq, np.zeros((2, 2, 3), np.uint8), (720, 1280), 0.0)


def _slots(*cameras: str) -> FrameSlots:
    slots = FrameSlots()
    for cam in cameras:
        slots.add_camera(cam)
    return slots


def test_newest_frame_wins_and_the_overwritten_one_is_counted():
    """Two frames before a take: the batch gets the second, the first counts as dropped."""
    slots, stop = _slots("a"), threading.Event()
    assert slots.put(_frame("a", 1)) is False
    assert slots.put(_frame("a", 2)) is True
    (frame,) = slots.take_batch(8, 0, stop)
    assert frame.seq == 2
    assert frame.stamps.batched > 0
    assert slots.dropped() == {"a": 1}


@pytest.mark.timeout(10)
def test_batch_closes_once_every_live_camera_contributed():
    """With all cameras in, the batch closes at once however long max_wait is."""
    slots, stop = _slots("a", "b", "c"), threading.Event()
    for cam in "abc":
        slots.put(_frame(cam, 1))
    batch = slots.take_batch(8, NEVER_MS, stop)
    assert sorted(f.camera for f in batch) == ["a", "b", "c"]


@pytest.mark.timeout(10)
def test_a_camera_that_lost_its_stream_is_not_waited_for():
    """A camera marked not live (dead or stalled) does not hold the batch open."""
    slots, stop = _slots("a", "b"), threading.Event()
    slots.put(_frame("b", 1))
    slots.take_batch(8, 0, stop)
    slots.set_not_live("b")
    slots.put(_frame("a", 1))
    assert [f.camera for f in slots.take_batch(8, NEVER_MS, stop)] == ["a"]


def test_max_batch_caps_and_round_robin_shares_under_overload():
    """Six cameras, batches of two, every slot refilled each round: each camera served equally."""
    cams = [f"cam{i}" for i in range(6)]
    slots, stop = _slots(*cams), threading.Event()
    served: Counter[str] = Counter()
    for round_no in range(30):
        for cam in cams:
            slots.put(_frame(cam, round_no))
        batch = slots.take_batch(2, 0, stop)
        assert len(batch) == 2
        assert len({f.camera for f in batch}) == 2
        served.update(f.camera for f in batch)
        slots.release(batch)
    assert set(served.values()) == {10}
    # Each round puts 6 frames and serves 2: the other 4 are replaced next round or still waiting.
    assert sum(slots.dropped().values()) == 30 * 6 - 30 * 2 - 4


def test_stop_returns_an_empty_batch():
    """A set stop event ends the wait with nothing taken."""
    slots, stop = _slots("a"), threading.Event()
    stop.set()
    assert slots.take_batch(8, NEVER_MS, stop) == []


@pytest.mark.timeout(10)
def test_waiting_taker_wakes_on_put():
    """A taker blocked on empty slots receives a frame put by another thread."""
    slots, stop = _slots("a"), threading.Event()
    got: list[list[Frame]] = []
    taker = threading.Thread(target=lambda: got.append(slots.take_batch(8, 0, stop)))
    taker.start()
    slots.put(_frame("a", 7))
    taker.join(5)
    assert not taker.is_alive()
    assert [f.seq for f in got[0]] == [7]


def test_removed_camera_hands_back_its_frame_and_ignores_late_puts():
    """Removing a camera returns its waiting frame; a put after removal is ignored."""
    slots, stop = _slots("a", "b"), threading.Event()
    slots.put(_frame("a", 1))
    assert slots.remove_camera("a").seq == 1
    assert slots.put(_frame("a", 2)) is False
    slots.put(_frame("b", 1))
    assert [f.camera for f in slots.take_batch(8, 0, stop)] == ["b"]


def test_a_camera_in_flight_is_not_taken_again_until_released():
    """Its next frame waits (newest wins there) until the batch holding the previous one is done."""
    slots, stop = _slots("a", "b"), threading.Event()
    slots.put(_frame("a", 1))
    first = slots.take_batch(8, 0, stop)
    assert [f.seq for f in first] == [1]
    assert slots.in_flight() == {"a"}
    slots.put(_frame("a", 2))
    slots.put(_frame("a", 3))  # replaces 2 while 1 is still in flight
    slots.put(_frame("b", 1))
    assert [(f.camera, f.seq) for f in slots.take_batch(8, 0, stop)] == [("b", 1)]
    slots.release(first)
    assert [(f.camera, f.seq) for f in slots.take_batch(8, 0, stop)] == [("a", 3)]
    assert slots.dropped() == {"a": 1, "b": 0}


@pytest.mark.timeout(10)
def test_a_batch_does_not_wait_for_cameras_another_worker_holds():
    """With `a` in flight elsewhere, a batch of `b` closes at once however long max_wait is."""
    slots, stop = _slots("a", "b"), threading.Event()
    slots.put(_frame("a", 1))
    slots.take_batch(8, 0, stop)
    slots.put(_frame("b", 1))
    assert [f.camera for f in slots.take_batch(8, NEVER_MS, stop)] == ["b"]


def test_shared_slots_split_ready_cameras_between_workers():
    """Six ready cameras and two workers: each batch takes three, so both workers have work."""
    cams = [f"cam{i}" for i in range(6)]
    slots, stop = _slots(*cams), threading.Event()
    for cam in cams:
        slots.put(_frame(cam, 1))
    first = slots.take_batch(8, 0, stop, share=2)
    second = slots.take_batch(8, 0, stop, share=2)
    assert len(first) == 3
    assert len(second) == 3
    assert {f.camera for f in first} | {f.camera for f in second} == set(cams)


def test_released_camera_is_taken_again_and_removal_clears_in_flight():
    slots, stop = _slots("a"), threading.Event()
    slots.put(_frame("a", 1))
    slots.take_batch(8, 0, stop)
    slots.remove_camera("a")
    assert slots.in_flight() == set()


@pytest.mark.timeout(10)
def test_an_idle_take_returns_empty_after_the_poll_interval():
    """No frames at all (every camera down): the worker gets [] back and can show it is alive."""
    slots, stop = _slots("a"), threading.Event()
    assert slots.take_batch(8, NEVER_MS, stop, idle_poll_s=0.05) == []
