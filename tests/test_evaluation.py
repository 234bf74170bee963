"""mAP50 of a detector on the synthetic held-out set: matching, AP, and the shipped model's number."""

import numpy as np
import pytest
import supervision as sv

from edge_agent.evaluation import (
    EVAL_SETTINGS,
    HELDOUT_HW,
    ApAccumulator,
    GroundTruth,
    average_precision,
    evaluate,
    heldout_samples,
    match_detections,
)
from edge_agent.inference.loading import open_model
from edge_agent.training import train

NAMES = ["nut", "washer", "bracket", "scratch"]
# Ours (the runtime's single-label decode, 320x320, all-point AP) against the manifest's Ultralytics
# val (multi-label decode, 224x320, its own integration) on the same held-out images: Ultralytics
# scores 0.031 higher on the demo model (0.9367 vs 0.9053, see edge_agent/evaluation.py); much more
# than that means one of the two measures something else.
MAX_DIFF_FROM_MANIFEST = 0.04


def _gt(*boxes):
    return GroundTruth(np.asarray([b[1:] for b in boxes], np.float32).reshape(-1, 4),
                       np.asarray([b[0] for b in boxes], np.int64))


def _det(*boxes):
    return sv.Detections(xyxy=np.asarray([b[2:] for b in boxes], np.float32).reshape(-1, 4),
                         confidence=np.asarray([b[1] for b in boxes], np.float32),
                         class_id=np.asarray([b[0] for b in boxes], np.int64))


@pytest.mark.parametrize(
    ("preds", "gt", "expected"),
    [
        # (class, conf, box) per prediction; (class, box) per ground truth
        ([(0, 0.9, 0, 0, 10, 10)], [(0, 0, 0, 10, 10)], [True]),
        ([(1, 0.9, 0, 0, 10, 10)], [(0, 0, 0, 10, 10)], [False]),  # right box, wrong class
        ([(0, 0.9, 0, 0, 10, 10), (0, 0.8, 0, 0, 10, 10)], [(0, 0, 0, 10, 10)], [True, False]),  # duplicate
        ([(0, 0.9, 0, 0, 10, 20)], [(0, 0, 0, 10, 10)], [True]),  # IoU exactly 0.5 counts
        ([(0, 0.9, 0, 0, 10, 21)], [(0, 0, 0, 10, 10)], [False]),  # IoU just below 0.5
        # The more confident detection claims the box first, even if the other overlaps it better.
        ([(0, 0.6, 0, 0, 10, 10), (0, 0.9, 1, 1, 11, 11)], [(0, 0, 0, 10, 10)], [False, True]),
        ([], [(0, 0, 0, 10, 10)], []),
        ([(0, 0.9, 0, 0, 10, 10)], [], [False]),
    ],
)
def test_match_detections(preds, gt, expected):
    """Greedy by confidence, same class, IoU >= 0.5, each ground truth matched at most once."""
    det = _det(*preds)
    tp = match_detections(det.xyxy, det.confidence, det.class_id, _gt(*gt))
    assert tp.tolist() == expected


@pytest.mark.parametrize(
    ("recall", "precision", "all_point", "ultralytics"),
    [
        ([1.0], [1.0], 1.0, 0.995),  # Ultralytics' well-known ceiling
        ([0.5, 0.5, 1.0], [1.0, 0.5, 2 / 3], 0.5 + 0.5 * 2 / 3, 0.8283),
        ([0.5], [1.0], 0.5, 0.75),  # the line from (0.5, 1) to (1, 0) is credited
        ([0.0], [0.0], 0.0, 0.0),
    ],
)
def test_average_precision(recall, precision, all_point, ultralytics):
    """All-point AP is the exact area under the precision envelope; `ultralytics` is their compute_ap."""
    r, p = np.asarray(recall), np.asarray(precision)
    assert average_precision(r, p, "all-point") == pytest.approx(all_point)
    assert average_precision(r, p, "ultralytics") == pytest.approx(ultralytics, abs=1e-4)


def test_accumulator_per_class_and_mean():
    """Classes without ground truth are left out; a missed class scores 0; the mean is over the rest."""
    acc = ApAccumulator(NAMES)
    acc.add(_det((0, 0.9, 0, 0, 10, 10), (2, 0.5, 50, 50, 60, 60)), _gt((0, 0, 0, 10, 10), (1, 20, 20, 30, 30)))
    acc.add(_det((0, 0.8, 0, 0, 10, 10)), _gt((0, 1, 1, 10, 10)))
    result = acc.result()
    assert result.ap50_per_class == {"nut": 1.0, "washer": 0.0}
    assert result.map50 == 0.5
    assert (result.images, result.instances) == (2, 3)


def test_ground_truth_as_detections_scores_one():
    """The labels themselves, offered as detections, give mAP50 1.0 on real held-out scenes."""
    acc = ApAccumulator(NAMES)
    for sample in heldout_samples(6, jpeg_quality=None):
        gt = GroundTruth.of(sample)
        acc.add(sv.Detections(xyxy=gt.xyxy, confidence=np.ones(len(gt.class_id), np.float32),
                              class_id=gt.class_id), gt)
    result = acc.result()
    assert result.map50 == 1.0
    assert result.instances > 6


def test_agrees_with_supervision_coco_map50():
    """On noisy detections of real scenes, our all-point mAP50 is supervision's (COCO) mAP50."""
    rng = np.random.default_rng(7)
    acc, coco = ApAccumulator(NAMES), sv.metrics.MeanAveragePrecision()
    for sample in heldout_samples(20, jpeg_quality=None):
        gt = GroundTruth.of(sample)
        keep = rng.random(len(gt.class_id)) > 0.2  # some missed
        xyxy = gt.xyxy[keep] + rng.normal(0, 4, (int(keep.sum()), 4)).astype(np.float32)
        cls = np.where(rng.random(len(xyxy)) < 0.1, (gt.class_id[keep] + 1) % 4, gt.class_id[keep])
        fp = rng.uniform(0, 300, (3, 2)).astype(np.float32)
        xyxy = np.concatenate([xyxy, np.concatenate([fp, fp + 40], axis=1)])
        cls = np.concatenate([cls, rng.integers(0, 4, 3)])
        det = sv.Detections(xyxy=xyxy, confidence=rng.random(len(xyxy)).astype(np.float32), class_id=cls)
        acc.add(det, gt)
        coco.update(det, sv.Detections(xyxy=gt.xyxy, class_id=gt.class_id))
    assert acc.result().map50 == pytest.approx(coco.compute().map50, abs=0.002)


def test_heldout_samples_are_the_training_split():
    """Same seed as the training tool's held-out split, 640x360, deterministic."""
    from edge_agent import evaluation

    assert evaluation.HELDOUT_SEED == train.HELDOUT_SEED
    a, b = heldout_samples(2), heldout_samples(2)
    assert a[0].image.shape[:2] == HELDOUT_HW
    assert np.array_equal(a[1].image, b[1].image)
    assert not np.array_equal(a[0].image, heldout_samples(1, jpeg_quality=None)[0].image)


def test_shipped_model_matches_its_manifest(demo_model, demo_manifest):
    """Our mAP50 of the shipped model is within 4 points of the Ultralytics number in its manifest."""
    model = open_model(demo_model, settings=EVAL_SETTINGS, runner_options={"threads": 2}, warmup=False)
    result = evaluate(model.detector, heldout_samples(demo_manifest.metrics["images"]))
    assert result.images == demo_manifest.metrics["images"]
    assert result.map50 == pytest.approx(demo_manifest.metrics["mAP50"], abs=MAX_DIFF_FROM_MANIFEST)
