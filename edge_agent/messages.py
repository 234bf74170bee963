"""What the daemon publishes, as plain data. The publisher turns these into MQTT payloads and
knows nothing of the stages that produce them."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from edge_agent.frame import Stamps

SCHEMA_VERSION = 1


class CameraState(StrEnum):
    ONLINE = "online"
    RECONNECTING = "reconnecting"
    STALLED = "stalled"
    DISABLED = "disabled"


@dataclass(frozen=True, slots=True)
class CameraStatus:
    camera: str
    state: CameraState
    reason: str
    since: float  # wall-clock seconds

    def payload(self) -> dict[str, Any]:
        return {"schema": SCHEMA_VERSION, "camera": self.camera, "state": self.state.value,
                "reason": self.reason, "since": round(self.since, 3)}


@dataclass(frozen=True, slots=True)
class ModelRef:
    name: str
    version: str
    sha256: str

    def payload(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "sha256": self.sha256[:12]}


@dataclass(frozen=True, slots=True)
class DetectedObject:
    label: str
    class_id: int
    confidence: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in the camera's own pixels


@dataclass(slots=True)
class DetectionResult:
    """One frame's detections; `stamps.published` is set by the publisher as it hands it over."""

    camera: str
    frame: int
    captured_at: float
    model: ModelRef
    objects: list[DetectedObject]
    batch_size: int
    stamps: Stamps
    batch: int = 0  # sequence number of the batch: one model per batch, visible to subscribers

    def payload(self, node: str) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "node": node,
            "camera": self.camera,
            "frame": self.frame,
            "captured_at": round(self.captured_at, 6),
            "model": self.model.payload(),
            "objects": [
                {"label": o.label, "class_id": o.class_id, "confidence": round(o.confidence, 4),
                 "box": [round(v, 1) for v in o.box]}
                for o in self.objects
            ],
            "timings_ms": self.stamps.timings_ms(),
            "batch_size": self.batch_size,
            "batch": self.batch,
        }
