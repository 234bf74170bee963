"""Alarm rules frame by frame: debounce, start/update/end, cooldown, count thresholds, line
crossings, zone counts, and the analytics section's configuration errors."""

from __future__ import annotations

import itertools
import textwrap
from typing import Any, NamedTuple

import av
import pytest
import yaml
from pydantic import ValidationError

from edge_agent.analytics.config import AnalyticsConfig
from edge_agent.analytics.events import AlarmEvent, AlarmState
from edge_agent.analytics.rules import CameraAnalytics
from edge_agent.analytics.tracking import detections_from_objects
from edge_agent.config.loader import ConfigIssue, _issues_from
from edge_agent.messages import DetectedObject, ModelRef
from edge_agent.synthetic.scenario import Scenario, blips, crossings, dwell
from edge_agent.synthetic.scene import CLASS_NAMES

FPS = 10
T0 = 1_700_000_000.0  # wall-clock capture times, as the daemon stamps them
MODEL = ModelRef("demo-parts", "1.0.0", "ab" * 32)
ZONE = {"name": "belt", "polygon": [[100, 100], [300, 100], [300, 300], [100, 300]]}

START, UPDATE, END = AlarmState.START, AlarmState.UPDATE, AlarmState.END


def _obj(x: float, label: str = "nut", confidence: float = 0.9) -> DetectedObject:
    """A 40 px object whose bottom centre is at (x, 200): in the zone for 100 < x < 300."""
    return DetectedObject(label, CLASS_NAMES.index(label), confidence, (x - 20, 160, x + 20, 200))


NUT, OTHER_NUT, THIRD_NUT = _obj(150), _obj(250), _obj(200)
OUTSIDE = _obj(500)


def _analytics(*rules: dict[str, Any], zones: tuple[dict[str, Any], ...] = (ZONE,),
               lines: tuple[dict[str, Any], ...] = ()) -> CameraAnalytics:
    config = AnalyticsConfig.model_validate({"zones": zones, "lines": lines, "rules": rules})
    ids = itertools.count(1)
    return CameraAnalytics("cam1", config, new_id=lambda: f"alarm-{next(ids)}")


def _run(analytics: CameraAnalytics, *segments: tuple[list[DetectedObject], int]) -> list[AlarmEvent]:
    """Feed `count` frames of each segment's objects at FPS; every event, in order."""
    frames = [objects for objects, count in segments for _ in range(count)]
    events = []
    for frame, objects in enumerate(frames):
        events += analytics.process(frame, T0 + frame / FPS, detections_from_objects(objects), MODEL).events
    return events


def _states(events: list[AlarmEvent]) -> list[tuple[AlarmState, int, int]]:
    return [(e.state, e.frame, e.count) for e in events]


def test_object_in_zone_gives_one_start_and_one_end_with_its_duration():
    """A nut in the zone on frames 5..24: start once the debounce (1 s) has passed, end once it has
    been gone end_after_s (0.5 s); duration from the first to the last frame it was there."""
    analytics = _analytics({"name": "dwell", "zone": "belt", "min_duration_s": 1.0, "end_after_s": 0.5})
    events = _run(analytics, ([], 5), ([NUT], 20), ([], 10))
    assert _states(events) == [(START, 15, 1), (END, 29, 1)]
    start, end = events
    assert start.id == end.id == "alarm-1"
    assert (start.seq, end.seq) == (0, 1)
    assert start.started_at == end.started_at == pytest.approx(T0 + 0.5)
    assert end.ended_at == pytest.approx(T0 + 2.4)
    assert end.duration_s == pytest.approx(1.9)
    assert start.duration_s is None
    assert (end.labels, end.track_ids, end.zone, end.line) == (("nut",), (1,), "belt", None)


def _truth_detections(scenario: Scenario, frame: int) -> list[DetectedObject]:
    return [DetectedObject(CLASS_NAMES[b.class_id], b.class_id, 0.9, (b.x1, b.y1, b.x2, b.y2))
            for b in scenario.truth(frame)]


def _run_scenario(scenario: Scenario, analytics: CameraAnalytics) -> list[AlarmEvent]:
    events = []
    for frame in range(scenario.frame_count):
        detections = detections_from_objects(_truth_detections(scenario, frame))
        events += analytics.process(frame, T0 + scenario.time_of(frame), detections, MODEL).events
    return events


def test_scripted_dwell_clip_gives_exactly_its_duration():
    """The generated clip's part (1 s to 3 s in the zone) gives one start and one end, 2 s apart."""
    scenario = dwell()
    assert scenario.zone is not None
    zone = {"name": "belt", "polygon": [list(p) for p in scenario.zone]}
    analytics = _analytics({"name": "dwell", "zone": "belt", "min_duration_s": 1.0}, zones=(zone,))
    events = _run_scenario(scenario, analytics)
    assert [e.state for e in events] == [START, END]
    assert events[1].duration_s == pytest.approx(scenario.dwell_s[0]) == pytest.approx(2.0)


@pytest.mark.parametrize("debounce", [{"min_duration_s": 1.0}, {"min_frames": 10}])
def test_scripted_blips_below_the_debounce_give_nothing(debounce):
    """Appearances shorter than the debounce, further apart than end_after_s, raise no alarm."""
    scenario = blips()
    assert scenario.zone is not None
    first, second = scenario.appearances[:2]
    assert (first.last_frame - first.first_frame) / scenario.fps < 1.0  # each sighting, first to last frame
    assert (second.first_frame - first.last_frame) / scenario.fps > 1.0  # from one to the next
    zone = {"name": "belt", "polygon": [list(p) for p in scenario.zone]}
    analytics = _analytics({"name": "dwell", "zone": "belt", "end_after_s": 1.0, **debounce}, zones=(zone,))
    assert _run_scenario(scenario, analytics) == []


def test_gaps_shorter_than_end_after_s_do_not_restart_the_debounce():
    """Two 0.5 s sightings 0.3 s apart are one episode (a detector missing a few frames): it passes
    a 1 s debounce. The same sightings 0.6 s apart, with end_after_s 0.5, are two blips."""
    rule = {"name": "dwell", "zone": "belt", "min_duration_s": 1.0, "end_after_s": 0.5}
    bridged = _run(_analytics(rule), ([NUT], 5), ([], 3), ([NUT], 5), ([], 10))
    assert _states(bridged) == [(START, 10, 1), (END, 17, 1)]
    assert bridged[-1].duration_s == pytest.approx(1.2)
    assert _run(_analytics(rule), ([NUT], 5), ([], 6), ([NUT], 5), ([], 10)) == []


def test_min_frames_counts_matching_frames():
    """min_frames 5: four frames are a blip, the fifth starts the alarm."""
    rule = {"name": "dwell", "zone": "belt", "min_frames": 5, "end_after_s": 0.25}
    assert _run(_analytics(rule), ([NUT], 4), ([], 5)) == []
    assert _states(_run(_analytics(rule), ([NUT], 5), ([], 5))) == [(START, 4, 1), (END, 7, 1)]


def test_cooldown_suppresses_a_new_start_then_lets_it_through():
    """After an end, matching frames within cooldown_s are ignored; the next episode starts at the
    first matching frame after it, under a new id."""
    analytics = _analytics({"name": "dwell", "zone": "belt", "end_after_s": 0.2, "cooldown_s": 2.0})
    events = _run(analytics, ([NUT], 3), ([], 3), ([NUT], 5), ([], 12), ([NUT], 3), ([], 3))
    # end on frame 4 -> cooldown until frame 24; the nut is back on 6..10 (ignored) and 23..25.
    assert _states(events) == [(START, 0, 1), (END, 4, 1), (START, 24, 1), (END, 27, 1)]
    assert [e.id for e in events] == ["alarm-1", "alarm-1", "alarm-2", "alarm-2"]
    assert events[2].started_at == pytest.approx(T0 + 2.4)  # the first frame after the cooldown


def test_count_threshold_and_updates_when_the_count_changes():
    """min_count 2: one nut is not enough; two start it; a third and its leaving are updates; down to
    one the rule no longer matches, and the alarm ends end_after_s later."""
    analytics = _analytics({"name": "crowd", "zone": "belt", "min_count": 2, "end_after_s": 0.5})
    events = _run(analytics, ([NUT], 3), ([NUT, OTHER_NUT], 3), ([NUT, OTHER_NUT, THIRD_NUT], 3),
                  ([NUT, OTHER_NUT], 3), ([NUT], 10))
    assert _states(events) == [(START, 3, 2), (UPDATE, 6, 3), (UPDATE, 9, 2), (END, 16, 2)]
    assert [e.seq for e in events] == [0, 1, 2, 3]
    assert [e.track_ids for e in events] == [(1, 2), (1, 2, 3), (1, 2), (1, 2)]
    assert events[-1].duration_s == pytest.approx(0.8)  # frames 3..11


def test_update_when_the_objects_change_but_not_their_count():
    """One nut replaced by another: still one, but a new track id, so an update."""
    analytics = _analytics({"name": "dwell", "zone": "belt", "end_after_s": 0.5})
    events = _run(analytics, ([NUT], 3), ([OTHER_NUT], 3))
    assert [(e.state, e.count, e.track_ids) for e in events] == [(START, 1, (1,)), (UPDATE, 1, (2,))]


def test_classes_and_min_confidence_select_the_objects():
    """A washer and a nut below min_confidence do not match a nut rule; a confident nut does."""
    rule = {"name": "nuts", "zone": "belt", "classes": ["nut"], "min_confidence": 0.7, "end_after_s": 0.5}
    assert _run(_analytics(rule), ([_obj(150, "washer"), _obj(250, confidence=0.6)], 5)) == []
    events = _run(_analytics(rule), ([_obj(150, "washer"), _obj(250, confidence=0.8)], 5))
    assert [(e.state, e.labels) for e in events] == [(START, ("nut",))]


def test_a_rule_without_zone_or_line_watches_the_whole_frame():
    """Outside every zone still matches a whole-frame rule."""
    events = _run(_analytics({"name": "anything", "end_after_s": 0.2}), ([OUTSIDE], 2), ([], 3))
    assert [e.state for e in events] == [START, END]


def test_end_all_ends_running_alarms_and_drops_pending_ones():
    """Camera gone: the running alarm ends at its last matching frame, a pending one says nothing,
    and the tracks start afresh."""
    analytics = _analytics({"name": "fast", "zone": "belt"},
                           {"name": "slow", "zone": "belt", "min_duration_s": 10})
    _run(analytics, ([NUT], 5))
    [end] = analytics.end_all(99, T0 + 60, MODEL)
    assert (end.rule, end.state, end.frame, end.at) == ("fast", END, 99, T0 + 60)
    assert end.ended_at == pytest.approx(T0 + 0.4)
    assert analytics.end_all(100, T0 + 61, MODEL) == []
    back = analytics.process(101, T0 + 62, detections_from_objects([NUT]), MODEL).events
    assert [(e.rule, e.state, e.track_ids) for e in back] == [("fast", START, (2,))]  # tracks were forgotten


def test_snapshot_is_asked_for_on_start_only():
    """A rule with snapshot: true marks its start event, not its updates or end."""
    events = _run(_analytics({"name": "dwell", "zone": "belt", "snapshot": True, "end_after_s": 0.2}),
                  ([NUT], 2), ([OTHER_NUT], 2), ([], 3))
    assert [(e.state, e.snapshot) for e in events] == [(START, True), (UPDATE, False), (END, False)]


def test_zone_counts_per_label_drop_to_zero():
    """Counts are objects in the zone now, per label and in total; a label seen once stays, at 0."""
    analytics = _analytics()
    counts = [analytics.process(i, T0 + i / FPS, detections_from_objects(objs), MODEL).counts
              for i, objs in enumerate([[NUT, OTHER_NUT, _obj(200, "washer"), OUTSIDE], []])]
    assert counts[0] == {"counts/belt/all": 3, "counts/belt/nut": 2, "counts/belt/washer": 1}
    assert counts[1] == {"counts/belt/all": 0, "counts/belt/nut": 0, "counts/belt/washer": 0}


def _crossing_analytics(scenario: Scenario, *rules: dict[str, Any]) -> CameraAnalytics:
    assert scenario.line is not None
    line = {"name": "gate", "start": list(scenario.line[0]), "end": list(scenario.line[1])}
    return _analytics(*rules, zones=(), lines=(line,))


def test_line_crossings_on_the_scripted_clip_are_counted_exactly():
    """Three parts cross left to right (in) and one back (out); counts and per-crossing alarms agree."""
    scenario = crossings()
    analytics = _crossing_analytics(scenario, {"name": "in", "line": "gate", "direction": "in", "end_after_s": 0},
                                    {"name": "out", "line": "gate", "direction": "out", "end_after_s": 0})
    events = _run_scenario(scenario, analytics)
    assert analytics.counts == {"crossings/gate/all/in": 3, "crossings/gate/all/out": 1,
                                "crossings/gate/nut/in": 3, "crossings/gate/nut/out": 1}
    starts = [(e.rule, e.track_ids) for e in events if e.state == START]
    assert starts == [("in", (1,)), ("in", (2,)), ("in", (3,)), ("out", (4,))]
    assert sum(e.state == END for e in events) == 4
    assert (scenario.crossings_in, scenario.crossings_out) == (3, 1)


def test_line_rule_with_a_count_threshold():
    """min_count 2 crossings, each within end_after_s of the last: starts on the second crossing,
    updates on each further one, ends end_after_s after the last."""
    scenario = crossings()
    analytics = _crossing_analytics(scenario, {"name": "busy", "line": "gate", "min_count": 2, "end_after_s": 3})
    events = _run_scenario(scenario, analytics)
    events += analytics.end_all(scenario.frame_count, T0 + 60, MODEL)
    assert [(e.state, e.count, e.track_ids) for e in events] == [
        (START, 2, (1, 2)), (UPDATE, 3, (1, 2, 3)), (UPDATE, 4, (1, 2, 3, 4)), (END, 4, (1, 2, 3, 4))]


def test_alarm_payload():
    """The message carries what subscribers key on: id and seq, camera, rule, zone, labels, times, model."""
    events = _run(_analytics({"name": "dwell", "zone": "belt", "end_after_s": 0.2}), ([NUT], 3), ([], 3))
    doc = events[-1].payload("node-a")
    assert doc == {
        "schema": 1, "id": "alarm-1", "seq": 1, "state": "end", "node": "node-a", "camera": "cam1",
        "rule": "dwell", "zone": "belt", "line": None, "labels": ["nut"], "track_ids": [1], "count": 1,
        "started_at": round(T0, 6), "at": round(T0 + 0.4, 6), "ended_at": round(T0 + 0.2, 6),
        "duration_s": 0.2, "frame": 4, "model": {"name": "demo-parts", "version": "1.0.0", "sha256": "ab" * 6},
    }


class Broken(NamedTuple):
    id: str
    section: dict[str, Any]
    key: str  # as the loader prints it, below the camera's `analytics`
    message: str


BOW_TIE = [[0, 0], [100, 100], [100, 0], [0, 100]]
BROKEN = [Broken(*case) for case in [
    ("two-points", {"zones": [{"name": "z", "polygon": [[0, 0], [1, 1]]}]}, "zones[0].polygon", "at least 3"),
    ("self-intersecting", {"zones": [{"name": "z", "polygon": BOW_TIE}]}, "zones[0].polygon",
     "edges 0-1 and 2-3 cross"),
    ("repeated-point", {"zones": [{"name": "z", "polygon": [[0, 0], [9, 0], [9, 9], [0, 0]]}]},
     "zones[0].polygon", "repeats a point"),
    ("no-area", {"zones": [{"name": "z", "polygon": [[0, 0], [5, 5], [9, 9]]}]}, "zones[0].polygon", "no area"),
    ("negative-coordinate", {"zones": [{"name": "z", "polygon": [[0, 0], [9, 0], [9, -1]]}]},
     "zones[0].polygon[2][1]", "greater than or equal to 0"),
    ("bad-zone-name", {"zones": [{"name": "dock 1", "polygon": [[0, 0], [9, 0], [9, 9]]}]}, "zones[0].name",
     "pattern"),
    ("duplicate-zone", {"zones": [ZONE, ZONE]}, "zones[1].name", "duplicate name 'belt' (also zones[0])"),
    ("zero-length-line", {"lines": [{"name": "l", "start": [5, 5], "end": [5, 5]}]}, "lines[0].end",
     "two distinct points"),
    ("zone-and-line", {"zones": [ZONE], "lines": [{"name": "l", "start": [0, 0], "end": [0, 9]}],
                       "rules": [{"name": "r", "zone": "belt", "line": "l"}]}, "rules[0].line", "not both"),
    ("unknown-zone", {"zones": [ZONE], "rules": [{"name": "r1", "zone": "belt"}, {"name": "r2", "zone": "dock"}]},
     "rules[1].zone", "rule 'r2' names zone 'dock', which is not defined; zones: belt"),
    ("unknown-line", {"rules": [{"name": "r", "line": "gate"}]}, "rules[0].line",
     "rule 'r' names line 'gate', which is not defined; lines: none"),
    ("duplicate-rule", {"rules": [{"name": "r"}, {"name": "r"}]}, "rules[1].name", "duplicate name 'r'"),
    ("line-debounce", {"lines": [{"name": "l", "start": [0, 0], "end": [0, 9]}],
                       "rules": [{"name": "r", "line": "l", "min_duration_s": 2}]}, "rules[0].min_duration_s",
     "a crossing is instantaneous"),
    ("direction-without-line", {"zones": [ZONE], "rules": [{"name": "r", "zone": "belt", "direction": "in"}]},
     "rules[0].direction", "line rules only"),
    ("bad-direction", {"rules": [{"name": "r", "direction": "up"}]}, "rules[0].direction", "'any', 'in' or 'out'"),
    ("confidence-above-one", {"rules": [{"name": "r", "min_confidence": 1.5}]}, "rules[0].min_confidence",
     "less than or equal to 1"),
    ("zero-min-count", {"rules": [{"name": "r", "min_count": 0}]}, "rules[0].min_count", "greater than or equal to 1"),
    ("unknown-key", {"rules": [{"name": "r", "zones": ["belt"]}]}, "rules[0].zones", "unknown key"),
    ("tracker-confidences", {"tracker": {"high_confidence": 0.3, "low_confidence": 0.4}},
     "tracker.low_confidence", "must be <= high_confidence (0.3)"),
]]


def _issues(section: dict[str, Any] | str) -> list[ConfigIssue]:
    """Validate a section (a dict, or YAML text) and report it the way the loader does."""
    text = section if isinstance(section, str) else yaml.safe_dump(section)
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root)
    finally:
        loader.dispose()
    with pytest.raises(ValidationError) as caught:
        AnalyticsConfig.model_validate(data)
    return _issues_from("edge.yaml", root, data, caught.value)


@pytest.mark.parametrize("case", BROKEN, ids=[case.id for case in BROKEN])
def test_broken_analytics_section_names_the_key(case: Broken) -> None:
    """Each mistake is one issue at the key to fix, saying why."""
    [issue] = _issues(case.section)
    assert issue.key == case.key
    assert case.message in issue.message


def test_errors_point_at_their_yaml_line():
    """Through the loader's own mapping, an unknown zone in a rule is reported on that rule's line."""
    [issue] = _issues(textwrap.dedent("""\
        zones:
          - name: belt
            polygon: [[100, 100], [300, 100], [300, 300]]
        rules:
          - name: r1
            zone: dock
    """))
    assert (issue.line, issue.key, issue.value) == (6, "rules[0].zone", "dock")
    assert str(issue).startswith("edge.yaml:6: rules[0].zone = \"dock\": rule 'r1' names zone 'dock'")


def test_defaults():
    """An empty section is valid: no zones, lines or rules, default tracker."""
    config = AnalyticsConfig.model_validate({})
    assert (config.zones, config.lines, config.rules) == ((), (), ())
    assert (config.tracker.high_confidence, config.tracker.max_lost_frames) == (0.5, 30)


def test_scripted_clip_encodes_with_the_frames_its_truth_describes(tmp_path):
    """The MP4 the end-to-end tests play has exactly the scenario's frames, at its rate and size."""
    scenario = dwell(enter_s=0.5, leave_s=1.0, seconds=2.0, width=320, height=180)
    path = tmp_path / "dwell.mp4"
    assert scenario.write(path) > 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="bgr24") for frame in container.decode(stream)]
        assert (stream.average_rate, stream.width, stream.height) == (scenario.fps, 320, 180)
    assert len(frames) == scenario.frame_count == 30
    # The nut (first visible on frame 8) changes the frame where it lies; the empty belt does not.
    [box] = scenario.truth(10)
    x1, y1, x2, y2 = (round(v) for v in (box.x1, box.y1, box.x2, box.y2))
    assert abs(frames[10][y1:y2, x1:x2].astype(int) - frames[0][y1:y2, x1:x2]).mean() > 20
    assert scenario.truth(0) == []
