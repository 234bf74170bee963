"""Stage timings from frame stamps, the detections payload, and the stats snapshot."""

from edge_agent.frame import Stamps
from edge_agent.messages import DetectedObject, DetectionResult, ModelRef
from edge_agent.telemetry.stats import STAGES, CameraCounters, StatsCollector

MS = 1_000_000


def _stamps(start: int = 1_000 * MS) -> Stamps:
    return Stamps(captured=start, decoded=start + 3 * MS, batched=start + 5 * MS,
                  preprocessed=start + 6 * MS, inferred=start + 16 * MS,
                  postprocessed=start + 17 * MS, published=start + 18 * MS)


def _result(camera: str, frame: int) -> DetectionResult:
    return DetectionResult(camera, frame, 1700000000.5, ModelRef("m", "1", "ab" * 32),
                           [DetectedObject("nut", 0, 0.91234, (1.04, 2.0, 30.0, 40.0))], 3, _stamps())


def test_timings_are_differences_of_stamps():
    """Each stage is the time between the stamps around it; total is capture to hand-off."""
    assert _stamps().timings_ms() == {"decode": 3.0, "queue": 2.0, "preprocess": 1.0, "infer": 10.0,
                                      "postprocess": 1.0, "publish": 1.0, "total": 18.0}


def test_unset_stamps_give_zero_not_negative():
    """A stage that has not run yet reports 0, never a negative duration."""
    assert Stamps(captured=5).timings_ms()["total"] == 0.0


def test_detection_payload_fields():
    """The detections message carries every field subscribers rely on."""
    doc = _result("cam1", 7).payload("node-a")
    assert doc["schema"] == 1
    assert (doc["node"], doc["camera"], doc["frame"], doc["batch_size"]) == ("node-a", "cam1", 7, 3)
    assert doc["model"] == {"name": "m", "version": "1", "sha256": "ab" * 6}
    assert doc["objects"] == [{"label": "nut", "class_id": 0, "confidence": 0.9123,
                               "box": [1.0, 2.0, 30.0, 40.0]}]
    assert set(doc["timings_ms"]) == set(STAGES)


def test_stats_snapshot_rates_percentiles_and_deltas():
    """A snapshot reports per-camera deltas since the previous one and per-stage percentiles."""
    stats = StatsCollector()
    for i in range(10):
        stats.record(_result("cam1", i))
    first = stats.snapshot("n", {"cam1": CameraCounters(12, 11, 1, 0, 0, "online")},
                           batches=5, frames=10, max_batch=4)
    assert first["stages_ms"]["infer"] == {"p50": 10.0, "p95": 10.0, "p99": 10.0}
    assert first["cameras"]["cam1"]["dropped"] == 1
    assert first["batch"]["mean_size"] == 2.0
    assert first["batch"]["mean_fill"] == 0.5
    second = stats.snapshot("n", {"cam1": CameraCounters(20, 19, 4, 1, 0, "reconnecting")},
                            batches=5, frames=10, max_batch=4)
    assert second["cameras"]["cam1"]["dropped"] == 3
    assert second["cameras"]["cam1"]["reconnects"] == 1
    assert second["cameras"]["cam1"]["processed_fps"] == 0.0
    assert second["stages_ms"]["infer"] == {}
    assert second["process"]["rss_mb"] > 0
