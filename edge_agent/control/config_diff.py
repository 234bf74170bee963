"""What changed between two validated configs, so that a reload touches only that.

Cameras are matched by name: a camera whose settings are equal is left alone (it keeps its
stream and its frame sequence), an edited one restarts, added and removed ones start and stop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edge_agent.config.schema import CameraConfig, EdgeConfig


@dataclass(frozen=True)
class ConfigDiff:
    added: tuple[CameraConfig, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[CameraConfig, ...] = ()  # the new settings of edited cameras
    mqtt: bool = False  # node name or broker settings: the MQTT link is rebuilt
    model: bool = False  # the model file, backend, threads or input size: a new model is loaded
    detector: bool = False  # thresholds, batch size or wait only: same model, new settings
    stats_interval: bool = False
    summary: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.summary


def _changed_fields(old: object, new: object, fields: tuple[str, ...]) -> list[str]:
    return [f for f in fields if getattr(old, f) != getattr(new, f)]


def diff(old: EdgeConfig, new: EdgeConfig) -> ConfigDiff:
    old_cams = {c.name: c for c in old.cameras if c.enabled}
    new_cams = {c.name: c for c in new.cameras if c.enabled}
    added = tuple(c for name, c in new_cams.items() if name not in old_cams)
    removed = tuple(name for name in old_cams if name not in new_cams)
    changed = tuple(c for name, c in new_cams.items() if name in old_cams and old_cams[name] != c)
    summary = [f"camera {c.name} added" for c in added]
    summary += [f"camera {name} removed" for name in removed]
    for cam in changed:
        fields = _changed_fields(old_cams[cam.name], cam, tuple(CameraConfig.model_fields))
        summary.append(f"camera {cam.name} changed: {', '.join(fields)}")
    mqtt = old.mqtt != new.mqtt or old.node != new.node
    if mqtt:
        what = _changed_fields(old.mqtt, new.mqtt, tuple(type(new.mqtt).model_fields))
        summary.append(f"mqtt changed: {', '.join(what + (['node.name'] if old.node != new.node else []))}")
    model_fields = ("path", "backend", "threads", "input_size", "providers", "gpus", "engine_build",
                    "engine_cache")
    model = bool(_changed_fields(old.model, new.model, model_fields))
    detector_fields = ("confidence", "iou", "max_batch", "max_wait_ms")
    detector_changes = _changed_fields(old.model, new.model, detector_fields)
    if model or detector_changes:
        what = _changed_fields(old.model, new.model, model_fields + detector_fields)
        summary.append(f"model changed: {', '.join(what)}")
    if old.metrics != new.metrics or old.watch_config != new.watch_config:
        summary.append("metrics/watch_config changed: takes effect at the next restart")
    if old.model.workers != new.model.workers:
        summary.append("model.workers changed: takes effect at the next restart")
    stats_interval = old.stats_interval_s != new.stats_interval_s
    if stats_interval:
        summary.append(f"stats_interval_s {old.stats_interval_s:g} -> {new.stats_interval_s:g}")
    return ConfigDiff(added, removed, changed, mqtt, model, bool(detector_changes) and not model,
                      stats_interval, summary)
