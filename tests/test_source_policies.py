"""Pure policies of camera sources: reconnect backoff with jitter, the detect_fps gate."""

import random

import pytest

from edge_agent.sources.camera import SourceOptions
from edge_agent.sources.pacing import Backoff, RateGate


def test_backoff_grows_exponentially_with_bounded_jitter_and_caps():
    """Each delay lies in [step/2, step], steps double from initial_s and stop at max_s."""
    backoff = Backoff(0.5, 8.0, random.Random(1))
    steps = [0.5, 1, 2, 4, 8, 8, 8]
    for step in steps:
        delay = backoff.next_delay_s()
        assert step / 2 <= delay <= step
    backoff.reset()
    assert backoff.next_delay_s() <= 0.5


def test_backoff_jitter_spreads_a_fleet():
    """Cameras that failed together do not all retry at the same moment."""
    delays = {round(Backoff(1.0, 30.0, random.Random(seed)).next_delay_s(), 3) for seed in range(20)}
    assert len(delays) > 10


@pytest.mark.parametrize(
    ("in_fps", "detect_fps", "seconds", "expected"),
    [
        (15, None, 2, 30),
        (15, 5, 3, 15),   # every third frame
        (15, 15, 2, 30),
        (30, 10, 1, 10),
        (15, 7, 3, 21),
        (25, 30, 2, 50),  # a cap above the input rate keeps everything
    ],
)
def test_rate_gate_keeps_the_configured_rate(in_fps, detect_fps, seconds, expected):
    """Stream-time gating keeps detect_fps frames per second of video, evenly spaced."""
    gate = RateGate(detect_fps)
    kept = [i for i in range(in_fps * seconds) if gate.keep(i / in_fps)]
    assert len(kept) == expected


def test_rate_gate_restarts_when_time_goes_back():
    """A looping file restarts its timestamps: the gate keeps the first frame of the new loop."""
    gate = RateGate(5)
    assert gate.keep(10.0)
    assert gate.keep(0.0)


@pytest.mark.parametrize(
    ("url", "is_file", "path"),
    [
        ("rtsp://10.0.0.5/stream1", False, None),
        ("rtsps://cam/1", False, None),
        ("/var/lib/videos/a.mp4", True, "/var/lib/videos/a.mp4"),
        ("file:///srv/a.mp4", True, "/srv/a.mp4"),
    ],
)
def test_source_kind_from_url(url, is_file, path):
    """URLs with a scheme other than file:// are live streams; the rest are files."""
    options = SourceOptions(name="c", url=url)
    assert options.is_file is is_file
    if path:
        assert options.path == path
