"""The `analytics:` section of a camera: zones, counting lines, alarm rules and tracker settings.

Same conventions as `edge_agent.config.schema` (frozen models that only validate, every number
bounded, cross-field errors raised with an `at` location the loader turns into a line). The two
helpers below are repeated rather than imported because the schema imports this module: an import
back would be circular.

Coordinates are the camera's own pixels, (0, 0) at the top left, y pointing down.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"  # as the schema's: names become MQTT topic levels
Name = Annotated[str, Field(pattern=_NAME_PATTERN, description="1-64 letters, digits, '_' or '-'")]
Label = Annotated[str, Field(min_length=1, max_length=128)]
Coordinate = Annotated[float, Field(ge=0, le=16384, description="pixels")]
Point = tuple[Coordinate, Coordinate]
Direction = Literal["any", "in", "out"]


def _fail(kind: str, message: str, *at: str | int) -> PydanticCustomError:
    return PydanticCustomError(kind, message, {"at": at})


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ZoneConfig(_Section):
    """A polygon; an object is in the zone when the bottom centre of its box is."""

    name: Name
    polygon: tuple[Point, ...] = Field(min_length=3, max_length=64, description="[[x, y], ...]")

    @field_validator("polygon")
    @classmethod
    def _simple_polygon(cls, polygon: tuple[Point, ...]) -> tuple[Point, ...]:
        if len(set(polygon)) != len(polygon):
            raise ValueError("repeats a point; give each corner once")
        crossing = _self_intersection(polygon)
        if crossing is not None:
            first, second = crossing
            raise ValueError(f"edges {first}-{first + 1} and {second}-{(second + 1) % len(polygon)} cross; "
                             "list the corners in order around the zone")
        if _area2(polygon) == 0:
            raise ValueError("has no area (all points on one line)")
        return polygon


class LineConfig(_Section):
    """A counting line from `start` to `end`.

    Crossing it from the side where (end - start) x (p - start) > 0 to the other side is `in`: for
    a vertical line drawn top to bottom, left to right; for a horizontal line drawn left to right,
    bottom to top. Swap start and end to swap the directions.
    """

    name: Name
    start: Point
    end: Point

    @model_validator(mode="after")
    def _distinct(self) -> Self:
        if self.start == self.end:
            raise _fail("line_length", "must differ from start: a line needs two distinct points", "end")
        return self


class TrackerConfig(_Section):
    """ByteTrack's settings: detections at or above `high_confidence` start and continue tracks;
    those between `low_confidence` and it only continue tracks (occluded, blurred objects)."""

    high_confidence: float = Field(default=0.5, gt=0, le=1)
    low_confidence: float = Field(default=0.1, gt=0, le=1)
    match_iou: float = Field(default=0.2, gt=0, le=1, description="least overlap of box and track")
    max_lost_frames: int = Field(default=30, ge=0, le=10_000, description="frames a track survives unseen")
    min_hits: int = Field(default=1, ge=1, le=100, description="frames a new track needs before it is reported")

    @model_validator(mode="after")
    def _low_below_high(self) -> Self:
        if self.low_confidence > self.high_confidence:
            raise _fail("confidence_order", f"must be <= high_confidence ({self.high_confidence:g})",
                        "low_confidence")
        return self


class AlarmRuleConfig(_Section):
    """When to raise an alarm; see `edge_agent.analytics.rules` for the state machine.

    A zone rule (or, with neither zone nor line, a whole-frame rule) is true on a frame when at
    least `min_count` matching objects are present; a line rule counts matching crossings.
    """

    name: Name
    classes: tuple[Label, ...] | None = Field(default=None, min_length=1, max_length=1024)
    zone: Name | None = None
    line: Name | None = None
    direction: Direction = Field(default="any", description="line rules: which crossings count")
    min_confidence: float = Field(default=0.0, ge=0, le=1)
    min_frames: int = Field(default=1, ge=1, le=100_000, description="debounce, in matching frames")
    min_duration_s: float = Field(default=0.0, ge=0, le=86_400, description="debounce, in seconds")
    min_count: int = Field(default=1, ge=1, le=10_000)
    end_after_s: float = Field(default=1.0, ge=0, le=3600, description="absence that ends an alarm")
    cooldown_s: float = Field(default=0.0, ge=0, le=86_400, description="quiet time after an end")
    snapshot: bool = False

    @model_validator(mode="after")
    def _one_target(self) -> Self:
        if self.zone is not None and self.line is not None:
            raise _fail("rule_target", "give zone or line, not both (a rule watches one of them)", "line")
        if self.line is None and self.direction != "any":
            raise _fail("direction_without_line", "direction applies to line rules only", "direction")
        if self.line is not None:
            for key in ("min_frames", "min_duration_s"):
                if key in self.model_fields_set:
                    raise _fail("line_debounce", f"a crossing is instantaneous: {key} applies to zone and "
                                "whole-frame rules; line rules use min_count and end_after_s", key)
        return self


class AnalyticsConfig(_Section):
    zones: tuple[ZoneConfig, ...] = Field(default=(), max_length=64)
    lines: tuple[LineConfig, ...] = Field(default=(), max_length=64)
    rules: tuple[AlarmRuleConfig, ...] = Field(default=(), max_length=256)
    tracker: TrackerConfig = Field(default_factory=TrackerConfig)

    @model_validator(mode="after")
    def _names_resolve(self) -> Self:
        # Names key the count topics and the alarms: two with one name would overwrite each other.
        for key, items in (("zones", self.zones), ("lines", self.lines), ("rules", self.rules)):
            _unique(key, [item.name for item in items])
        zones, lines = [zone.name for zone in self.zones], [line.name for line in self.lines]
        for index, rule in enumerate(self.rules):
            for key, name, known in (("zone", rule.zone, zones), ("line", rule.line, lines)):
                if name is not None and name not in known:
                    defined = ", ".join(known) if known else "none"
                    raise _fail(f"unknown_{key}", f"rule {rule.name!r} names {key} {name!r}, which is not "
                                f"defined; {key}s: {defined}", "rules", index, key)
        return self


def _unique(key: str, names: Sequence[str]) -> None:
    seen: dict[str, int] = {}
    for index, name in enumerate(names):
        if name in seen:
            raise _fail(f"duplicate_{key}", f"duplicate name {name!r} (also {key}[{seen[name]}])",
                        key, index, "name")
        seen[name] = index


def _area2(polygon: Sequence[Point]) -> float:
    """Twice the signed area (shoelace)."""
    return sum(x1 * y2 - x2 * y1 for (x1, y1), (x2, y2) in zip(polygon, (*polygon[1:], polygon[0]), strict=True))


def _orientation(a: Point, b: Point, c: Point) -> int:
    cross = (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
    return (cross > 0) - (cross < 0)


def _on_segment(a: Point, b: Point, p: Point) -> bool:
    return min(a[0], b[0]) <= p[0] <= max(a[0], b[0]) and min(a[1], b[1]) <= p[1] <= max(a[1], b[1])


def _segments_touch(a: Point, b: Point, c: Point, d: Point) -> bool:
    o1, o2, o3, o4 = _orientation(a, b, c), _orientation(a, b, d), _orientation(c, d, a), _orientation(c, d, b)
    if o1 != o2 and o3 != o4 and 0 not in (o1, o2, o3, o4):
        return True
    return ((o1 == 0 and _on_segment(a, b, c)) or (o2 == 0 and _on_segment(a, b, d))
            or (o3 == 0 and _on_segment(c, d, a)) or (o4 == 0 and _on_segment(c, d, b)))


def _self_intersection(polygon: Sequence[Point]) -> tuple[int, int] | None:
    """The first pair of non-adjacent edges that touch or cross; at most 64 points, so O(n^2) is fine."""
    n = len(polygon)
    for i in range(n):
        for j in range(i + 2, n):
            if i == 0 and j == n - 1:
                continue  # the closing edge shares point 0 with edge 0
            if _segments_touch(polygon[i], polygon[(i + 1) % n], polygon[j], polygon[(j + 1) % n]):
                return i, j
    return None
