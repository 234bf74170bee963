"""Several GPUs: least-in-flight dispatch over fake runners (the GPU boundary), driven by events."""

import threading

import numpy as np
import pytest

from edge_agent.inference.dispatch import Dispatcher, RunnerSlot, least_in_flight, open_per_device
from edge_agent.inference.runner import RunnerError, TensorSpec

SHA = "ab" * 32
WAIT_S = 10  # only ever reached if the code under test is broken


class FakeRunner:
    """A runner whose batches can be held open with an event, to keep work in flight."""

    model_sha256 = SHA
    inputs = (TensorSpec("images", (None, 3, 32, 32), "float32"),)
    outputs = (TensorSpec("out", (None, 8, None), "float32"),)

    def __init__(self, index: int, *, hold: threading.Event | None = None, fail: bool = False) -> None:
        self.index = index
        self.hold = hold
        self.fail = fail
        self.entered = threading.Event()
        self.batches: list[int] = []
        self.closed = False

    def infer(self, batch):
        self.entered.set()
        if self.hold is not None:
            assert self.hold.wait(WAIT_S)
        if self.fail:
            raise RunnerError(f"runner {self.index} failed")
        self.batches.append(batch.shape[0])
        return np.full((batch.shape[0], 8, 4), self.index, np.float32)

    def warmup(self, batch_size, height, width):
        pass

    def close(self):
        self.closed = True


class FakeClock:
    def __init__(self) -> None:
        self.now_ns = 0

    def __call__(self) -> int:
        return self.now_ns


def _sha(runner):
    return runner.model_sha256


def _batch(n: int = 2):
    return np.zeros((n, 3, 32, 32), np.float32)


def _dispatcher(*runners, clock=None):
    slots = [RunnerSlot(f"cuda:{r.index}", r, SHA) for r in runners]
    return Dispatcher(slots, clock=clock) if clock else Dispatcher(slots)


@pytest.mark.parametrize(
    ("in_flight", "start", "expected"),
    [
        ([0, 0, 0], 0, 0),
        ([0, 0, 0], 2, 2),  # ties: round-robin from the cursor
        ([1, 0, 1], 0, 1),
        ([1, 1, 0], 0, 2),
        ([2, 1, 1], 2, 2),
        ([2, 1, 1], 0, 1),
        ([5], 0, 0),
    ],
)
def test_least_in_flight(in_flight, start, expected):
    assert least_in_flight(in_flight, start) == expected


def test_idle_runners_take_turns():
    """With nothing in flight, consecutive batches alternate between the GPUs."""
    a, b = FakeRunner(0), FakeRunner(1)
    dispatcher = _dispatcher(a, b)
    outs = [int(dispatcher.infer(_batch())[0, 0, 0]) for _ in range(4)]
    assert outs == [0, 1, 0, 1]


def test_busy_runner_is_passed_over():
    """While GPU 0 holds a batch, every new batch goes to GPU 1."""
    hold = threading.Event()
    a, b = FakeRunner(0, hold=hold), FakeRunner(1)
    dispatcher = _dispatcher(a, b)
    worker = threading.Thread(target=dispatcher.infer, args=(_batch(),))
    worker.start()
    assert a.entered.wait(WAIT_S)
    for _ in range(3):
        assert int(dispatcher.infer(_batch())[0, 0, 0]) == 1
    assert [s.in_flight for s in dispatcher.slots] == [1, 0]
    hold.set()
    worker.join(WAIT_S)
    assert (a.batches, b.batches) == ([2], [2, 2, 2])
    assert [s.in_flight for s in dispatcher.slots] == [0, 0]


def test_failure_is_counted_and_releases_the_slot():
    """A failing runner's error reaches the caller; its in-flight count goes back to zero."""
    bad = FakeRunner(0, fail=True)
    dispatcher = _dispatcher(bad, FakeRunner(1))
    with pytest.raises(RunnerError, match="runner 0 failed"):
        dispatcher.infer(_batch())
    assert dispatcher.slots[0].in_flight == 0
    assert dispatcher.slots[0].errors == 1


def test_runners_must_serve_the_same_model():
    """Each runner names its model's sha256; a mix is refused with all of them in the message."""
    slots = [RunnerSlot("cuda:0", FakeRunner(0), SHA), RunnerSlot("cuda:1", FakeRunner(1), "cd" * 32)]
    with pytest.raises(RunnerError, match=r"cuda:0 serves abababababab, cuda:1 serves cdcdcdcdcdcd"):
        Dispatcher(slots)
    with pytest.raises(RunnerError, match="at least one"):
        Dispatcher([])


def test_snapshot_reports_per_gpu_throughput_and_model():
    """Per-GPU fps, batches, busy share and sha256 over the interval; the next interval starts at zero."""
    clock = FakeClock()
    a, b = FakeRunner(0), FakeRunner(1)
    dispatcher = _dispatcher(a, b, clock=clock)
    for n in (4, 2, 4):
        dispatcher.infer(_batch(n))
    clock.now_ns = 2_000_000_000
    first = dispatcher.snapshot()
    assert [(s["runner"], s["frames"], s["batches"], s["fps"]) for s in first] == [
        ("cuda:0", 8, 2, 4.0), ("cuda:1", 2, 1, 1.0)]
    assert {s["model_sha256"] for s in first} == {SHA}
    clock.now_ns = 4_000_000_000
    assert [s["frames"] for s in dispatcher.snapshot()] == [0, 0]


def test_frames_go_to_runners_that_take_them():
    """infer_frames reaches the chosen runner's own; a runner without it is a clear error."""

    class FrameRunner(FakeRunner):
        def infer_frames(self, images, letterboxes, *, bgr=True):
            assert len(letterboxes) == len(images)
            assert bgr
            return np.full((len(images), 8, 4), 10 + self.index, np.float32)

    frames = [np.zeros((180, 320, 3), np.uint8)] * 3
    dispatcher = _dispatcher(FrameRunner(0), FrameRunner(1))
    assert dispatcher.infer_frames(frames, [None] * 3)[0, 0, 0] == 10
    assert dispatcher.slots[0].frames == 3
    with pytest.raises(RunnerError, match="takes no uint8 frames"):
        _dispatcher(FakeRunner(0)).infer_frames(frames, [None] * 3)


def test_dispatcher_is_a_runner():
    """The detector can use it as any runner: same I/O, warmup and close reach every GPU."""
    a, b = FakeRunner(0), FakeRunner(1)
    dispatcher = _dispatcher(a, b)
    assert dispatcher.inputs == a.inputs
    dispatcher.warmup(1, 32, 32)
    dispatcher.close()
    assert a.closed
    assert b.closed


def test_open_per_device():
    """One runner per GPU behind a dispatcher (one GPU too). A failure closes what was opened."""
    single = open_per_device([0], FakeRunner, _sha)
    assert [s.name for s in single.slots] == ["cuda:0"]
    several = open_per_device([0, 1], FakeRunner, _sha)
    assert [s.name for s in several.slots] == ["cuda:0", "cuda:1"]

    opened = []

    def flaky(device):
        if device == 1:
            raise RunnerError("GPU 1 does not exist")
        opened.append(FakeRunner(device))
        return opened[-1]

    with pytest.raises(RunnerError, match="GPU 1"):
        open_per_device([0, 1], flaky, _sha)
    assert opened[0].closed
    with pytest.raises(RunnerError, match="duplicates"):
        open_per_device([0, 0], FakeRunner, _sha)
