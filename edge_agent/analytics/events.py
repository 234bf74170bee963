"""What an alarm publishes: one message per state change, all of one alarm under one id.

An alarm is `start`ed once, `update`d while its objects change and `end`ed once. Every message
carries the alarm's `id` and a `seq` (0 for the start, then 1, 2, ...), so a subscriber drops a
message delivered twice (QoS 1 is at-least-once) by its (id, seq). Each message is complete on
its own: a subscriber that missed the start (it was dropped from a full spool) still learns
the camera, rule, labels and start time from the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from edge_agent.messages import SCHEMA_VERSION, ModelRef


class AlarmState(StrEnum):
    START = "start"
    UPDATE = "update"
    END = "end"


@dataclass(frozen=True, slots=True)
class AlarmEvent:
    id: str  # the alarm's, shared by its start, updates and end
    seq: int  # 0 for the start, +1 per later message of the same alarm
    state: AlarmState
    camera: str
    rule: str
    zone: str | None
    line: str | None
    labels: tuple[str, ...]  # sorted, distinct
    track_ids: tuple[int, ...]  # sorted: present now (zone rules), crossed so far (line rules)
    count: int  # matching objects now (zone rules), crossings so far (line rules)
    started_at: float  # wall-clock capture time of the first matching frame
    at: float  # capture time of the frame that caused this message
    frame: int  # that frame's per-camera sequence number
    model: ModelRef
    ended_at: float | None = None  # `end` only: capture time of the last matching frame
    snapshot: bool = False  # `start` of a rule that wants a snapshot of this frame

    @property
    def duration_s(self) -> float | None:
        """End only: from the first to the last matching frame."""
        return None if self.ended_at is None else self.ended_at - self.started_at

    def payload(self, node: str) -> dict[str, Any]:
        duration = self.duration_s
        return {
            "schema": SCHEMA_VERSION,
            "id": self.id,
            "seq": self.seq,
            "state": self.state.value,
            "node": node,
            "camera": self.camera,
            "rule": self.rule,
            "zone": self.zone,
            "line": self.line,
            "labels": list(self.labels),
            "track_ids": list(self.track_ids),
            "count": self.count,
            "started_at": round(self.started_at, 6),
            "at": round(self.at, 6),
            "ended_at": None if self.ended_at is None else round(self.ended_at, 6),
            "duration_s": None if duration is None else round(duration, 3),
            "frame": self.frame,
            "model": self.model.payload(),
        }
