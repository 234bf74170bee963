"""The ByteTrack-style tracker: stable ids across frames, misses, weak detections and classes."""

from __future__ import annotations

import numpy as np
import pytest
import supervision as sv

from edge_agent.analytics.config import TrackerConfig
from edge_agent.analytics.tracking import ByteTracker, box_iou, detections_from_objects, greedy_match
from edge_agent.messages import DetectedObject
from edge_agent.synthetic.scenario import crossings
from edge_agent.synthetic.scene import CLASS_NAMES

Box = tuple[float, float, float, float]


def _dets(*objects: tuple[Box, float, int]) -> sv.Detections:
    """(box, confidence, class id) per object, with class names as the detector sets them."""
    if not objects:
        return detections_from_objects([])
    return detections_from_objects([DetectedObject(CLASS_NAMES[c], c, conf, box) for box, conf, c in objects])


def _box(x: float, y: float = 100, size: float = 40) -> Box:
    return (x, y, x + size, y + size)


def _ids(tracker: ByteTracker, *objects: tuple[Box, float, int]) -> list[int]:
    out = tracker.update(_dets(*objects))
    assert out.tracker_id is not None
    return out.tracker_id.tolist()


def test_a_moving_object_keeps_one_id():
    """An object moving 8 px a frame for 40 frames is one track, id 1."""
    tracker = ByteTracker()
    assert {i for x in range(0, 320, 8) for i in _ids(tracker, (_box(x), 0.9, 0))} == {1}


def test_objects_get_distinct_ids_in_order_of_appearance():
    """Ids start at 1 and follow the order tracks are created; output keeps the input's order."""
    tracker = ByteTracker()
    assert _ids(tracker, (_box(0), 0.9, 0), (_box(200), 0.9, 0)) == [1, 2]
    assert _ids(tracker, (_box(204), 0.9, 0), (_box(4), 0.9, 0), (_box(400), 0.9, 1)) == [2, 1, 3]


def test_the_tracker_keeps_the_detections_data():
    """Boxes, confidences, class ids and class names come through; only tracker_id is added."""
    out = ByteTracker().update(_dets((_box(0), 0.9, 1)))
    assert out.data["class_name"].tolist() == ["washer"]
    assert (out.confidence.tolist(), out.class_id.tolist(), out.xyxy.tolist()) == ([0.9], [1], [list(_box(0))])


def test_weak_detections_continue_tracks_but_never_start_one():
    """Between low and high confidence a box continues a track seen last frame (ByteTrack's second
    stage) and is otherwise dropped."""
    tracker = ByteTracker(TrackerConfig(high_confidence=0.5, low_confidence=0.1))
    assert _ids(tracker, (_box(0), 0.2, 0)) == []
    assert _ids(tracker, (_box(100), 0.9, 0)) == [1]
    assert _ids(tracker, (_box(104), 0.2, 0)) == [1]  # blurred, still the same object
    assert _ids(tracker, (_box(108), 0.05, 0)) == []  # below low_confidence: ignored


def test_a_missed_object_keeps_its_id_where_its_motion_predicts_it():
    """Lost for a few frames, a moving object is matched where constant velocity puts it."""
    tracker = ByteTracker()
    for x in range(0, 100, 10):
        _ids(tracker, (_box(x), 0.9, 0))
    for _ in range(5):
        assert _ids(tracker) == []
    # 6 frames after x=90 at 10 px/frame: x=150, with no overlap with the last seen box.
    assert _ids(tracker, (_box(150), 0.9, 0)) == [1]


def test_a_track_lost_too_long_is_retired():
    """After max_lost_frames without a match the object comes back under a new id."""
    tracker = ByteTracker(TrackerConfig(max_lost_frames=3))
    _ids(tracker, (_box(0), 0.9, 0))
    for _ in range(4):
        _ids(tracker)
    assert _ids(tracker, (_box(0), 0.9, 0)) == [2]


def test_matching_is_class_aware():
    """A box of another class where a track is starts its own track."""
    tracker = ByteTracker()
    assert _ids(tracker, (_box(0), 0.9, 0)) == [1]
    assert _ids(tracker, (_box(0), 0.9, 1)) == [2]


def test_min_hits_holds_back_new_tracks():
    """With min_hits 3 a track is reported from its third frame; a one-frame blip never gets an id."""
    tracker = ByteTracker(TrackerConfig(min_hits=3))
    assert _ids(tracker, (_box(500), 0.9, 0)) == []  # a blip: gone the next frame
    assert _ids(tracker, (_box(0), 0.9, 0)) == []
    assert _ids(tracker, (_box(2), 0.9, 0)) == []
    assert _ids(tracker, (_box(4), 0.9, 0)) == [1]


def test_reset_forgets_every_track():
    """After reset the same object is a new track."""
    tracker = ByteTracker()
    _ids(tracker, (_box(0), 0.9, 0))
    tracker.reset()
    assert _ids(tracker, (_box(0), 0.9, 0)) == [2]


def test_empty_frames():
    """No detections in, none out, with an (empty) tracker_id array."""
    out = ByteTracker().update(_dets())
    assert len(out) == 0
    assert out.tracker_id is not None
    assert len(out.tracker_id) == 0


def test_one_id_per_part_on_the_crossings_clip():
    """On the scripted clip's ground truth, each part is exactly one track from first to last frame."""
    scenario = crossings()
    tracker = ByteTracker()
    owner: dict[int, set[int]] = {}
    for frame in range(scenario.frame_count):
        truth = scenario.truth(frame)
        out = tracker.update(_dets(*(((b.x1, b.y1, b.x2, b.y2), 0.9, b.class_id) for b in truth)))
        assert out.tracker_id is not None
        assert len(out) == len(truth)
        for box, track_id in zip(truth, out.tracker_id, strict=True):
            owner.setdefault(box.track_id, set()).add(int(track_id))
    assert sorted(owner) == list(range(len(scenario.appearances)))
    assert all(len(ids) == 1 for ids in owner.values())
    assert len({next(iter(ids)) for ids in owner.values()}) == len(owner)


@pytest.mark.parametrize(("a", "b", "iou"), [
    ((0, 0, 10, 10), (0, 0, 10, 10), 1.0),
    ((0, 0, 10, 10), (5, 0, 15, 10), 50 / 150),
    ((0, 0, 10, 10), (20, 20, 30, 30), 0.0),
    ((0, 0, 0, 0), (0, 0, 0, 0), 0.0),  # degenerate boxes: no division by zero
])
def test_box_iou(a, b, iou):
    assert box_iou(np.array([a], dtype=float), np.array([b], dtype=float))[0, 0] == pytest.approx(iou)


def test_greedy_match_takes_the_best_pairs_first():
    """Highest score first, each row and column once, nothing below the threshold."""
    score = np.array([[0.9, 0.8, 0.0],
                      [0.85, 0.1, 0.0],
                      [0.0, 0.0, 0.05]])
    assert greedy_match(score, 0.2) == [(0, 0)]
    assert greedy_match(score, 0.05) == [(0, 0), (1, 1), (2, 2)]
