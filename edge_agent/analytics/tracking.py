"""Track ids across frames: the `Tracker` boundary and a compact ByteTrack behind it.

Why not a package: supervision 0.31 removed `sv.ByteTrack`, and its successor, `trackers` (2.6),
declares `opencv-python`, the GUI build, as a hard dependency. Installed next to the
`opencv-python-headless` this project uses, both wheels write the same `cv2` package (removing or
upgrading either breaks the other) and the GUI build wants X11/GL libraries an edge box lacks;
it also pulls `rich`, and `import trackers` loads its dataset, download and annotator modules.
It does run on headless OpenCV and without torch when installed with `--no-deps`, but a
dependency that only installs correctly with a flag pyproject cannot express is not one to ship.
The association below is ByteTrack's (two stages: confident detections against every track, then
the weak ones against tracks that were seen in the previous frame, so an occluded or blurred
object keeps its id), with two simplifications whose cost we accept:

* motion is a constant-velocity box (smoothed per-coordinate displacement) instead of a Kalman
  filter: parts on a belt and people walking move smoothly over the few frames a track is lost;
* matching is greedy by IoU, highest first (as Norfair does), instead of the Hungarian
  assignment: with one camera's few tens of objects and a minimum IoU, the two differ only for
  boxes that overlap several tracks about equally, where either answer is a guess.

Matching is class-aware: a box never continues a track of another class, so every track has one
label, which is what alarm rules and counts key on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import supervision as sv

from edge_agent.analytics.config import TrackerConfig
from edge_agent.messages import DetectedObject

# ByteTrack's second stage: weak detections must overlap a track well to continue it.
LOW_STAGE_IOU = 0.5
_VELOCITY_SMOOTHING = 0.5  # weight of the newest displacement


class Tracker(Protocol):
    def update(self, detections: sv.Detections) -> sv.Detections:
        """The detections that belong to reported tracks, with `tracker_id` set."""
        ...

    def reset(self) -> None:
        """Forget every track (the camera reconnected; the next frame is a new scene)."""
        ...


@dataclass(slots=True)
class _Track:
    box: np.ndarray  # last matched box, x1 y1 x2 y2
    velocity: np.ndarray  # pixels per frame, per coordinate
    class_id: int
    last_frame: int
    hits: int = 1
    track_id: int = 0  # 0 until confirmed (min_hits matches); ids are then 1, 2, ...

    def predicted(self, frame: int) -> np.ndarray:
        return np.asarray(self.box + self.velocity * (frame - self.last_frame))

    def matched(self, box: np.ndarray, frame: int) -> None:
        step = (box - self.box) / (frame - self.last_frame)
        self.velocity = step if self.hits == 1 else (
            _VELOCITY_SMOOTHING * step + (1 - _VELOCITY_SMOOTHING) * self.velocity)
        self.box, self.last_frame, self.hits = box, frame, self.hits + 1


class ByteTracker:
    """One camera's tracks; `update` once per processed frame, in frame order."""

    def __init__(self, config: TrackerConfig | None = None) -> None:
        self.config = config or TrackerConfig()
        self._tracks: list[_Track] = []
        self._frame = 0
        self._next_id = 1

    def reset(self) -> None:
        self._tracks = []

    @property
    def active_tracks(self) -> int:
        return sum(1 for track in self._tracks if track.track_id)

    def update(self, detections: sv.Detections) -> sv.Detections:
        self._frame += 1
        frame, cfg = self._frame, self.config
        xyxy = np.asarray(detections.xyxy, dtype=np.float64).reshape(-1, 4)
        n = len(xyxy)
        conf = np.ones(n) if detections.confidence is None else np.asarray(detections.confidence, dtype=np.float64)
        cls = np.zeros(n, dtype=np.int64) if detections.class_id is None else np.asarray(detections.class_id)
        high = np.flatnonzero(conf >= cfg.high_confidence)
        low = np.flatnonzero((conf >= cfg.low_confidence) & (conf < cfg.high_confidence))

        tracks = self._tracks
        owner: dict[int, _Track] = {}  # detection index -> the track it continues
        first = self._associate(list(range(len(tracks))), high, xyxy, cls, cfg.match_iou)
        for t, d in first:
            owner[d] = tracks[t]
        taken = {t for t, _ in first}
        recent = [t for t in range(len(tracks))
                  if t not in taken and tracks[t].last_frame == frame - 1 and tracks[t].track_id]
        for t, d in self._associate(recent, low, xyxy, cls, LOW_STAGE_IOU):
            owner[d] = tracks[t]
        for d, track in owner.items():
            track.matched(xyxy[d], frame)
        self._tracks = [t for t in tracks if self._keeps(t)]
        for d in map(int, high):
            if d not in owner:
                track = _Track(xyxy[d].copy(), np.zeros(4), int(cls[d]), frame)
                self._tracks.append(track)
                owner[d] = track
        for track in owner.values():
            if not track.track_id and track.hits >= cfg.min_hits:
                track.track_id, self._next_id = self._next_id, self._next_id + 1
        keep = sorted(d for d, t in owner.items() if t.track_id)
        out = detections[np.array(keep, dtype=np.int64)]
        if not isinstance(out, sv.Detections):  # indexing by an array always gives Detections
            raise TypeError(f"expected sv.Detections, got {type(out).__name__}")
        out.tracker_id = np.array([owner[d].track_id for d in keep], dtype=np.int64)
        return out

    def _keeps(self, track: _Track) -> bool:
        if track.last_frame == self._frame:
            return True
        if not track.track_id:
            return False  # a tentative track missed once was noise (ByteTrack drops it too)
        return self._frame - track.last_frame <= self.config.max_lost_frames

    def _associate(self, track_rows: list[int], det_rows: np.ndarray, xyxy: np.ndarray, cls: np.ndarray,
                   min_iou: float) -> list[tuple[int, int]]:
        """Greedy IoU matching -> (track index, detection index) pairs."""
        if not track_rows or len(det_rows) == 0:
            return []
        predicted = np.stack([self._tracks[t].predicted(self._frame) for t in track_rows])
        track_cls = np.array([self._tracks[t].class_id for t in track_rows])
        iou = box_iou(predicted, xyxy[det_rows])
        iou[track_cls[:, None] != cls[det_rows][None, :]] = 0.0
        return [(track_rows[r], int(det_rows[c])) for r, c in greedy_match(iou, min_iou)]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4) and (M, 4) x1 y1 x2 y2 boxes -> (N, M) intersection over union."""
    a, b = a[:, None, :], b[None, :, :]
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    return np.asarray(np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0))


def greedy_match(score: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """Pairs (row, col) taken best score first, each row and column once, scores >= threshold."""
    rows, cols = np.nonzero(score >= threshold)
    order = np.argsort(-score[rows, cols], kind="stable")
    used_rows: set[int] = set()
    used_cols: set[int] = set()
    pairs = []
    for k in order:
        r, c = int(rows[k]), int(cols[k])
        if r not in used_rows and c not in used_cols:
            used_rows.add(r)
            used_cols.add(c)
            pairs.append((r, c))
    return pairs


def detections_from_objects(objects: Sequence[DetectedObject]) -> sv.Detections:
    """A `DetectionResult`'s objects as `sv.Detections` (with `class_name`), for the tracker."""
    if not objects:
        return sv.Detections(xyxy=np.empty((0, 4)), confidence=np.empty(0), class_id=np.empty(0, dtype=np.int64),
                             data={"class_name": np.empty(0, dtype=str)})
    return sv.Detections(
        xyxy=np.array([o.box for o in objects], dtype=np.float64),
        confidence=np.array([o.confidence for o in objects], dtype=np.float64),
        class_id=np.array([o.class_id for o in objects], dtype=np.int64),
        data={"class_name": np.array([o.label for o in objects])},
    )
