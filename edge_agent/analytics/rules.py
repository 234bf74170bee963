"""One camera's analytics per frame: track, place in zones, count line crossings, run the alarm rules.

Each rule is a small state machine driven by the frames' capture times (`captured_at` is anchored
to the monotonic clock once, so differences are durations, immune to wall-clock steps):

* A frame *matches* a zone rule (or a whole-frame rule, with neither zone nor line) when at least
  `min_count` tracked objects of `classes` with confidence >= `min_confidence` are present (in
  the zone: the bottom centre of the box is inside it). It matches a line rule when at least one
  such object crossed the line on that frame (in `direction`).
* Matching frames form an *episode*; gaps shorter than `end_after_s` do not break it (a detector
  missing an object for a frame or two does not restart the debounce, nor end an alarm).
* Debounce: a zone rule's alarm `start`s once its episode holds `min_frames` matching frames
  spanning at least `min_duration_s` (first to latest matching frame). A line rule's starts once
  the episode holds `min_count` crossings; with the default 1, every crossing that finds no
  alarm running starts one. An episode that ends before that was a blip: no message at all.
* While the alarm runs, a matching frame whose count, labels or track ids differ from the last
  message's sends an `update` (a line rule: every further crossing).
* `end` is sent on the first frame at least `end_after_s` after the last matching frame; its
  `ended_at` is that last matching frame and `duration_s` = ended_at - started_at, where
  `started_at` is the episode's first matching frame. So an object in a zone on frames f..g at
  `fps` gives one start, one end and a duration of (g - f) / fps.
* Cooldown: for `cooldown_s` after an `end` is sent, matching frames are ignored; the next
  episode begins at the first matching frame after that.

A frame that stops coming (camera stalled, reloaded, shut down) cannot end an alarm: the caller
ends what is running with `end_all`.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import supervision as sv

from edge_agent.analytics.config import AlarmRuleConfig, AnalyticsConfig
from edge_agent.analytics.events import AlarmEvent, AlarmState
from edge_agent.analytics.geometry import IN, OUT, Line, LineCrossings, Zone, anchors
from edge_agent.analytics.tracking import ByteTracker, Tracker
from edge_agent.messages import ModelRef

ALL_LABELS = "all"  # the count of every label together, as Frigate publishes it
# Capture times are ~1.7e9 s, so their differences carry ~1e-7 s of float rounding; this slack
# makes a bound that falls on a frame (1 s at 10 fps) take effect on that frame, not the next.
_SLACK_S = 1e-6


@dataclass(frozen=True, slots=True)
class _Seen:
    """What a rule matched: on one frame (zone rules) or so far in the episode (line rules)."""

    count: int
    track_ids: tuple[int, ...]
    labels: tuple[str, ...]

    def __add__(self, other: _Seen) -> _Seen:
        return _Seen(self.count + other.count, tuple(sorted({*self.track_ids, *other.track_ids})),
                     tuple(sorted({*self.labels, *other.labels})))


@dataclass(slots=True)
class _Episode:
    first_at: float
    last_at: float
    seen: _Seen
    frames: int = 1
    alarm_id: str | None = None  # set once started
    seq: int = 0
    published: _Seen | None = None  # what the last message said


@dataclass(frozen=True, slots=True)
class _Context:
    camera: str
    frame: int
    at: float
    model: ModelRef


class _RuleState:
    """The alarm state machine of one rule on one camera (see the module docstring)."""

    def __init__(self, rule: AlarmRuleConfig, new_id: Callable[[], str]) -> None:
        self.rule = rule
        self._new_id = new_id
        self._episode: _Episode | None = None
        self._cooldown_until = -math.inf

    def step(self, ctx: _Context, seen: _Seen | None) -> AlarmEvent | None:
        """Advance by one frame; `seen` is None when the frame does not match."""
        episode = self._episode
        if seen is None:
            if episode is not None and ctx.at - episode.last_at >= self.rule.end_after_s - _SLACK_S:
                return self.end(ctx)
            return None
        if episode is None:
            if ctx.at < self._cooldown_until - _SLACK_S:
                return None
            episode = self._episode = _Episode(ctx.at, ctx.at, seen)
        else:
            episode.frames += 1
            episode.last_at = ctx.at
            episode.seen = episode.seen + seen if self.rule.line is not None else seen
        return self._announce(episode, ctx)

    def _announce(self, episode: _Episode, ctx: _Context) -> AlarmEvent | None:
        if episode.alarm_id is not None:
            changed = episode.seen != episode.published
            return self._message(AlarmState.UPDATE, episode, ctx) if changed else None
        if not self._debounced(episode):
            return None
        episode.alarm_id = self._new_id()
        return self._message(AlarmState.START, episode, ctx)

    def end(self, ctx: _Context) -> AlarmEvent | None:
        """End the running alarm now (its last matching frame is its end); drop a pending episode."""
        episode, self._episode = self._episode, None
        if episode is None or episode.alarm_id is None:
            return None  # a blip that never passed the debounce
        self._cooldown_until = ctx.at + self.rule.cooldown_s
        return self._message(AlarmState.END, episode, ctx, ended_at=episode.last_at)

    def _debounced(self, episode: _Episode) -> bool:
        rule = self.rule
        if rule.line is not None:
            return episode.seen.count >= rule.min_count
        span_s = episode.last_at - episode.first_at
        return episode.frames >= rule.min_frames and span_s >= rule.min_duration_s - _SLACK_S

    def _message(self, state: AlarmState, episode: _Episode, ctx: _Context,
                 ended_at: float | None = None) -> AlarmEvent:
        assert episode.alarm_id is not None
        if state != AlarmState.START:
            episode.seq += 1
        episode.published = episode.seen
        rule = self.rule
        return AlarmEvent(
            id=episode.alarm_id, seq=episode.seq, state=state, camera=ctx.camera, rule=rule.name,
            zone=rule.zone, line=rule.line, labels=episode.seen.labels, track_ids=episode.seen.track_ids,
            count=episode.seen.count, started_at=episode.first_at, at=ctx.at, frame=ctx.frame,
            model=ctx.model, ended_at=ended_at, snapshot=rule.snapshot and state == AlarmState.START)


@dataclass(frozen=True, slots=True)
class AnalyticsResult:
    events: list[AlarmEvent]
    tracked: sv.Detections  # this frame's tracked objects (tracker_id set), e.g. for a snapshot
    # Topic suffix under the camera -> value: "counts/<zone>/<label>" (objects in the zone now)
    # and "crossings/<line>/<label>/<in|out>" (since start); "<label>" "all" sums the labels.
    counts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Frame:
    """The tracked objects of one frame, as arrays the rules select from."""

    track_ids: np.ndarray
    labels: np.ndarray
    confidence: np.ndarray
    in_zone: dict[str, np.ndarray]
    crossing: dict[str, np.ndarray]  # IN / OUT / NONE per object


class CameraAnalytics:
    """Everything one camera's `analytics:` section asks for; `process` every frame, in order."""

    def __init__(self, camera: str, config: AnalyticsConfig, *, tracker: Tracker | None = None,
                 new_id: Callable[[], str] = lambda: str(uuid.uuid4())) -> None:
        self.camera = camera
        self.config = config
        self._tracker = tracker if tracker is not None else ByteTracker(config.tracker)
        self._zones = [Zone(z.name, z.polygon) for z in config.zones]
        self._lines = [LineCrossings(Line(ln.name, ln.start, ln.end)) for ln in config.lines]
        self._rules = [_RuleState(rule, new_id) for rule in config.rules]
        self._counts: dict[str, int] = {}
        for zone in self._zones:
            self._counts[f"counts/{zone.name}/{ALL_LABELS}"] = 0
        for crossings in self._lines:
            for way in ("in", "out"):
                self._counts[f"crossings/{crossings.line.name}/{ALL_LABELS}/{way}"] = 0

    @property
    def counts(self) -> dict[str, int]:
        return dict(self._counts)

    def process(self, frame: int, captured_at: float, detections: sv.Detections,
                model: ModelRef) -> AnalyticsResult:
        tracked = self._tracker.update(detections)
        seen = self._frame(tracked)
        self._count(seen)
        ctx = _Context(self.camera, frame, captured_at, model)
        events = [event for state in self._rules
                  if (event := state.step(ctx, self._match(state.rule, seen))) is not None]
        return AnalyticsResult(events, tracked, dict(self._counts))

    def end_all(self, frame: int, at: float, model: ModelRef) -> list[AlarmEvent]:
        """End every running alarm and forget the tracks: the camera went away (stalled,
        reconnecting), or its config changed, or the daemon stops. Line and zone counts stay."""
        self._tracker.reset()
        ctx = _Context(self.camera, frame, at, model)
        return [event for state in self._rules if (event := state.end(ctx)) is not None]

    def _frame(self, tracked: sv.Detections) -> _Frame:
        n = len(tracked)
        ids = np.zeros(n, dtype=np.int64) if tracked.tracker_id is None else np.asarray(tracked.tracker_id)
        names = tracked.data.get("class_name")
        if names is not None:
            labels = np.asarray(names, dtype=str)
        elif tracked.class_id is not None:
            labels = np.asarray(tracked.class_id).astype(str)
        else:
            labels = np.full(n, "object")
        confidence = np.ones(n) if tracked.confidence is None else np.asarray(tracked.confidence)
        points = anchors(tracked.xyxy)
        return _Frame(ids, labels, confidence,
                      {zone.name: zone.contains(points) for zone in self._zones},
                      {c.line.name: c.update(ids, points) for c in self._lines})

    def _count(self, seen: _Frame) -> None:
        for zone, inside in seen.in_zone.items():
            for key in self._counts:
                if key.startswith(f"counts/{zone}/"):
                    self._counts[key] = 0
            self._counts[f"counts/{zone}/{ALL_LABELS}"] = int(inside.sum())
            labels, counts = np.unique(seen.labels[inside], return_counts=True)
            for label, count in zip(labels, counts, strict=True):
                self._counts[f"counts/{zone}/{topic_level(str(label))}"] = int(count)
        for line, directions in seen.crossing.items():
            for way, sign in (("in", IN), ("out", OUT)):
                crossed = directions == sign
                self._counts[f"crossings/{line}/{ALL_LABELS}/{way}"] += int(crossed.sum())
                for label in seen.labels[crossed]:
                    key = f"crossings/{line}/{topic_level(str(label))}/{way}"
                    self._counts[key] = self._counts.get(key, 0) + 1

    @staticmethod
    def _match(rule: AlarmRuleConfig, seen: _Frame) -> _Seen | None:
        mask = seen.confidence >= rule.min_confidence
        if rule.classes is not None:
            mask &= np.isin(seen.labels, rule.classes)
        if rule.zone is not None:
            mask &= seen.in_zone[rule.zone]
        if rule.line is not None:
            directions = seen.crossing[rule.line]
            wanted = {"any": directions != 0, "in": directions == IN, "out": directions == OUT}
            mask &= wanted[rule.direction]
        count = int(mask.sum())
        if count < (1 if rule.line is not None else rule.min_count):
            return None
        return _Seen(count, tuple(sorted(int(i) for i in seen.track_ids[mask])),
                     tuple(sorted({str(label) for label in seen.labels[mask]})))


def topic_level(label: str) -> str:
    """A label as one MQTT topic level: '/', '+' and '#' (and NUL) would change the topic's shape."""
    return label.translate(str.maketrans("/+#\x00", "____")) or "_"
