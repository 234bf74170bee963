"""YOLO head decoding and NMS, checked on hand-built head outputs."""

import numpy as np
import pytest

from edge_agent.inference.yolo_decode import decode, nms


def _head(rows: list[tuple[float, float, float, float, list[float]]], num_classes: int = 3) -> np.ndarray:
    """A [4 + C, A] head from (cx, cy, w, h, class scores) anchors."""
    head = np.zeros((4 + num_classes, len(rows)), dtype=np.float32)
    for a, (cx, cy, w, h, scores) in enumerate(rows):
        head[:4, a] = (cx, cy, w, h)
        head[4:, a] = scores
    return head


@pytest.mark.parametrize(
    ("boxes", "scores", "iou", "expected"),
    [
        ([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], [0.9, 0.8, 0.7], 0.5, [0, 2]),
        ([[0, 0, 10, 10], [1, 1, 11, 11]], [0.8, 0.9], 0.5, [1]),
        ([[0, 0, 10, 10], [5, 0, 15, 10]], [0.9, 0.8], 0.5, [0, 1]),  # IoU 1/3 kept
        ([[0, 0, 10, 10], [5, 0, 15, 10]], [0.9, 0.8], 0.3, [0]),
        ([[0, 0, 10, 10], [0, 0, 10, 10]], [0.5, 0.6], 0.99, [1]),  # identical boxes: IoU 1 > 0.99
        ([], [], 0.5, []),
    ],
)
def test_nms_table(boxes, scores, iou, expected):
    """Greedy NMS keeps the best box of each overlapping group, best first."""
    kept = nms(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32), iou)
    assert kept.tolist() == expected


def test_decode_picks_best_class_and_converts_to_xyxy():
    """Each anchor becomes one box of its best class; centre/size turn into corners."""
    head = _head([(100, 50, 20, 10, [0.1, 0.9, 0.2])])
    det = decode(head, conf_threshold=0.25, iou_threshold=0.7)
    np.testing.assert_allclose(det.xyxy, [[90, 45, 110, 55]])
    assert det.class_id.tolist() == [1]
    np.testing.assert_allclose(det.confidence, [0.9])


def test_decode_threshold_is_strict():
    """A score equal to the threshold is dropped, as in the reference implementation."""
    head = _head([(10, 10, 4, 4, [0.25, 0, 0]), (50, 50, 4, 4, [0.2501, 0, 0])])
    det = decode(head, conf_threshold=0.25, iou_threshold=0.7)
    assert det.xyxy.shape == (1, 4)
    assert det.xyxy[0, 0] == pytest.approx(48)


def test_nms_never_suppresses_across_classes():
    """Two identical boxes of different classes both survive; same class, only the best."""
    same_place = [(100, 100, 40, 40, [0.9, 0, 0]), (100, 100, 40, 40, [0, 0.8, 0]),
                  (101, 100, 40, 40, [0.7, 0, 0])]
    det = decode(_head(same_place), conf_threshold=0.25, iou_threshold=0.5)
    assert sorted(det.class_id.tolist()) == [0, 1]
    np.testing.assert_allclose(sorted(det.confidence.tolist()), [0.8, 0.9])


def test_decode_class_filter_and_max_det():
    """`classes` keeps only the named ids; `max_det` caps the count, highest scores kept."""
    rows = [(float(20 * i), 10, 8, 8, [0.3 + 0.05 * i, 0, 0.5]) for i in range(8)]
    head = _head(rows)
    only_zero = decode(head, conf_threshold=0.25, iou_threshold=0.5, classes=np.array([0]))
    assert set(only_zero.class_id.tolist()) == {0}
    capped = decode(head, conf_threshold=0.25, iou_threshold=0.5, max_det=3)
    assert len(capped.confidence) == 3
    assert capped.confidence.tolist() == sorted(capped.confidence.tolist(), reverse=True)


def test_decode_empty_when_nothing_passes():
    """No anchor above the threshold gives empty, correctly shaped arrays."""
    det = decode(_head([(1, 1, 1, 1, [0.1, 0.1, 0.1])]), conf_threshold=0.25, iou_threshold=0.7)
    assert det.xyxy.shape == (0, 4)
    assert det.confidence.shape == (0,)
    assert det.class_id.dtype == np.int64
