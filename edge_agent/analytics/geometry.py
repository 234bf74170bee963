"""Where tracked objects are: zone membership and counting-line crossings, vectorised over a frame.

An object's position is the bottom centre of its box (where a part touches the belt, where a
person stands), so a tall box leaning over a zone edge does not count as inside it. Points and
boxes are float arrays in the camera's pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

IN, OUT, NONE = 1, -1, 0  # crossing directions, as `LineCrossings.update` returns them


def anchors(xyxy: np.ndarray) -> np.ndarray:
    """Bottom centre of each box: (N, 4) x1, y1, x2, y2 -> (N, 2) x, y."""
    boxes = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    return np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, boxes[:, 3]], axis=1)


class Zone:
    """A polygon zone; `contains` is an even-odd ray cast against every edge at once."""

    def __init__(self, name: str, polygon: Sequence[tuple[float, float]]) -> None:
        self.name = name
        self.polygon = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
        if len(self.polygon) < 3:
            raise ValueError(f"zone {name!r}: a polygon needs >= 3 points, got {len(self.polygon)}")
        x1, y1 = self.polygon[:, 0], self.polygon[:, 1]
        x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
        self._x1, self._y1 = x1[None, :], y1[None, :]
        dy = y2 - y1
        # Horizontal edges never straddle a ray; their slope is never used, so any divisor will do.
        self._slope = np.where(dy == 0, 0.0, (x2 - x1) / np.where(dy == 0, 1.0, dy))[None, :]
        self._y2 = y2[None, :]

    def contains(self, points: np.ndarray) -> np.ndarray:
        """(N, 2) points -> (N,) bools; a point exactly on an edge may fall either side."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        x, y = pts[:, 0:1], pts[:, 1:2]
        straddles = (self._y1 > y) != (self._y2 > y)
        left_of_edge = x < self._x1 + (y - self._y1) * self._slope
        return np.asarray(np.count_nonzero(straddles & left_of_edge, axis=1) % 2 == 1)


class Line:
    """A counting line segment; see `edge_agent.analytics.config.LineConfig` for the directions."""

    def __init__(self, name: str, start: tuple[float, float], end: tuple[float, float]) -> None:
        if tuple(start) == tuple(end):
            raise ValueError(f"line {name!r}: start and end are the same point")
        self.name = name
        self.start = np.asarray(start, dtype=np.float64)
        self.end = np.asarray(end, dtype=np.float64)

    def sides(self, points: np.ndarray) -> np.ndarray:
        """(N, 2) points -> (N,) int8: +1 on the `in`-from side, -1 on the other, 0 on the line."""
        return _side(self.start, self.end, np.asarray(points, dtype=np.float64).reshape(-1, 2))

    def crossings(self, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        """Direction of each move `before[i]` -> `after[i]` across the segment: IN, OUT or NONE.

        A move counts when it starts strictly on one side and ends strictly on the other, and
        passes between the line's end points (a move around the end of the line does not).
        """
        p, q = np.asarray(before, dtype=np.float64).reshape(-1, 2), np.asarray(after, dtype=np.float64).reshape(-1, 2)
        s0, s1 = self.sides(p), self.sides(q)
        # The line's two ends on opposite sides of the move (or on it) <=> the move meets the segment.
        between = (_side_each(p, q, self.start) * _side_each(p, q, self.end)) <= 0
        moved_in = (s0 > 0) & (s1 < 0) & between
        moved_out = (s0 < 0) & (s1 > 0) & between
        return np.where(moved_in, IN, np.where(moved_out, OUT, NONE)).astype(np.int8)


def _side(a: np.ndarray, b: np.ndarray, points: np.ndarray) -> np.ndarray:
    cross = (b[0] - a[0]) * (points[:, 1] - a[1]) - (b[1] - a[1]) * (points[:, 0] - a[0])
    return np.asarray(np.sign(cross), dtype=np.int8)


def _side_each(a: np.ndarray, b: np.ndarray, point: np.ndarray) -> np.ndarray:
    """Side of one point relative to each of N segments a[i] -> b[i]."""
    cross = (b[:, 0] - a[:, 0]) * (point[1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (point[0] - a[:, 0])
    return np.asarray(np.sign(cross), dtype=np.int8)


class LineCrossings:
    """Crossings of one line by tracks, frame after frame.

    Each track's last position strictly off the line is remembered, so a track that stops on the
    line and then goes on is counted once, when it leaves on the far side, and a track missed by
    the detector for a few frames still counts when it reappears across the line. A track that
    sways back and forth across the line counts every time it does: there is no hysteresis.
    """

    def __init__(self, line: Line, *, forget_after_frames: int = 300) -> None:
        self.line = line
        self.forget_after_frames = forget_after_frames
        self._last: dict[int, tuple[float, float, int]] = {}  # track id -> x, y, frame seen off the line
        self._frame = 0

    def update(self, track_ids: np.ndarray, points: np.ndarray) -> np.ndarray:
        """(N,) track ids and (N, 2) anchors of one frame -> (N,) IN / OUT / NONE."""
        self._frame += 1
        ids = np.asarray(track_ids).reshape(-1)
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        directions = np.zeros(len(ids), dtype=np.int8)
        known = np.array([int(i) in self._last for i in ids], dtype=bool)
        if known.any():
            before = np.array([self._last[int(i)][:2] for i in ids[known]])
            directions[known] = self.line.crossings(before, pts[known])
        sides = self.line.sides(pts)
        for track_id, (x, y), side in zip(ids, pts, sides, strict=True):
            if side != 0:
                self._last[int(track_id)] = (float(x), float(y), self._frame)
        if self._frame % 64 == 0:  # bounded memory without scanning every frame
            horizon = self._frame - self.forget_after_frames
            self._last = {k: v for k, v in self._last.items() if v[2] >= horizon}
        return directions
