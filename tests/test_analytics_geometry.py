"""Zone membership by a box's bottom centre, and line crossings with their direction."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge_agent.analytics.geometry import IN, NONE, OUT, Line, LineCrossings, Zone, anchors

SQUARE = [(100, 100), (300, 100), (300, 300), (100, 300)]
# A U open at the top: the notch (x 160..240, y < 250) is outside.
U_SHAPE = [(100, 100), (160, 100), (160, 250), (240, 250), (240, 100), (300, 100), (300, 300), (100, 300)]
TRIANGLE = [(0, 0), (400, 0), (0, 400)]


def test_anchor_is_the_bottom_centre_of_the_box():
    """(x1, y1, x2, y2) -> ((x1 + x2) / 2, y2): where the object touches the ground."""
    boxes = np.array([[10, 20, 30, 60], [0, 0, 1, 1]], dtype=np.float32)
    assert anchors(boxes).tolist() == [[20.0, 60.0], [0.5, 1.0]]
    assert anchors(np.empty((0, 4))).shape == (0, 2)


@pytest.mark.parametrize(("polygon", "point", "inside"), [
    (SQUARE, (200, 200), True),
    (SQUARE, (99, 200), False),
    (SQUARE, (200, 301), False),
    (U_SHAPE, (200, 200), False),  # in the notch
    (U_SHAPE, (200, 280), True),  # in the bottom bar
    (U_SHAPE, (130, 120), True),  # in the left arm
    (U_SHAPE, (270, 120), True),  # in the right arm
    (TRIANGLE, (100, 100), True),
    (TRIANGLE, (300, 300), False),  # beyond the hypotenuse
])
def test_zone_contains(polygon, point, inside):
    """Points inside convex and concave polygons, and just outside their edges."""
    assert Zone("z", polygon).contains(np.array([point])).tolist() == [inside]


def test_zone_agrees_with_opencv_off_the_boundary():
    """The vectorised ray cast gives cv2.pointPolygonTest's answer for random points not on an edge."""
    rng = np.random.default_rng(0)
    points = rng.uniform(50, 350, size=(400, 2))
    contour = np.array(U_SHAPE, dtype=np.float32).reshape(-1, 1, 2)
    distance = np.array([cv2.pointPolygonTest(contour, (float(x), float(y)), measureDist=True) for x, y in points])
    clear = np.abs(distance) > 1e-6
    assert np.array_equal(Zone("u", U_SHAPE).contains(points)[clear], distance[clear] > 0)


def test_zone_of_no_points():
    """An empty frame gives an empty mask."""
    assert Zone("z", SQUARE).contains(np.empty((0, 2))).shape == (0,)


VERTICAL = Line("v", (200, 0), (200, 400))  # drawn top to bottom
HORIZONTAL = Line("h", (0, 200), (400, 200))  # drawn left to right


@pytest.mark.parametrize(("line", "before", "after", "direction"), [
    (VERTICAL, (150, 200), (250, 200), IN),  # left to right
    (VERTICAL, (250, 200), (150, 200), OUT),
    (HORIZONTAL, (100, 250), (100, 150), IN),  # bottom to top
    (HORIZONTAL, (100, 150), (100, 250), OUT),
    (VERTICAL, (150, 450), (250, 450), NONE),  # below the end of the segment
    (VERTICAL, (150, 200), (200, 200), NONE),  # onto the line, not across it
    (VERTICAL, (150, 100), (190, 300), NONE),  # moved, stayed on one side
    (Line("d", (0, 0), (400, 400)), (300, 100), (100, 300), OUT),  # a diagonal, corner to corner
])
def test_line_crossing_direction(line, before, after, direction):
    """A move counts only when it passes from one side to the other between the line's ends."""
    assert line.crossings(np.array([before]), np.array([after])).tolist() == [direction]


def test_swapping_the_ends_swaps_the_directions():
    """start/end define which way is in."""
    reverse = Line("v", (200, 400), (200, 0))
    assert reverse.crossings(np.array([[150, 200]]), np.array([[250, 200]])).tolist() == [OUT]


def _walk(crossings: LineCrossings, xs: list[float | None], track_id: int = 7) -> list[int]:
    """Feed one track's x positions (None: not detected that frame) at y=200; the directions seen."""
    seen = []
    for x in xs:
        if x is None:
            crossings.update(np.empty(0, dtype=np.int64), np.empty((0, 2)))
            continue
        seen += crossings.update(np.array([track_id]), np.array([[x, 200.0]])).tolist()
    return [d for d in seen if d != NONE]


@pytest.mark.parametrize(("xs", "expected"), [
    ([100, 150, 190, 210, 250], [IN]),
    ([100, 200, 200, 200, 250], [IN]),  # stops on the line, then goes on: once, when it leaves
    ([100, 200, 150], []),  # touches the line and turns back
    ([100, 190, None, None, None, 260], [IN]),  # missed by the detector while crossing
    ([150, 250, 150, 250], [IN, OUT, IN]),  # swaying: every crossing counts (no hysteresis)
    ([250], []),  # first seen already across: nothing to compare with
])
def test_line_crossings_per_track(xs, expected):
    """Each track's last position off the line is remembered between frames."""
    assert _walk(LineCrossings(VERTICAL), xs) == expected


def test_tracks_are_counted_independently():
    """Two tracks crossing in opposite directions on the same frame give one IN and one OUT."""
    crossings = LineCrossings(VERTICAL)
    crossings.update(np.array([1, 2]), np.array([[150, 100], [250, 300]]))
    assert crossings.update(np.array([1, 2]), np.array([[250, 100], [150, 300]])).tolist() == [IN, OUT]


def test_forgotten_tracks_do_not_count():
    """A track unseen for longer than forget_after_frames starts afresh (its id was retired)."""
    crossings = LineCrossings(VERTICAL, forget_after_frames=10)
    crossings.update(np.array([1]), np.array([[150, 200]]))
    for _ in range(200):
        crossings.update(np.empty(0, dtype=np.int64), np.empty((0, 2)))
    assert crossings.update(np.array([1]), np.array([[250, 200]])).tolist() == [NONE]
