"""Reload diffs: what a config edit touches."""

import pytest

from edge_agent.config.schema import EdgeConfig
from edge_agent.control.config_diff import diff

BASE = {
    "node": {"name": "n"},
    "model": {"path": "/m/model.onnx"},
    "cameras": [{"name": "a", "url": "rtsp://h/a"}, {"name": "b", "url": "rtsp://h/b"}],
}


def _cfg(**changes) -> EdgeConfig:
    doc = {**BASE, **changes}
    return EdgeConfig(**doc)


@pytest.mark.parametrize(
    ("changes", "added", "removed", "changed", "flags", "summary"),
    [
        ({}, [], [], [], set(), []),
        ({"cameras": [*BASE["cameras"], {"name": "c", "url": "rtsp://h/c"}]}, ["c"], [], [], set(),
         ["camera c added"]),
        ({"cameras": BASE["cameras"][:1]}, [], ["b"], [], set(), ["camera b removed"]),
        ({"cameras": [BASE["cameras"][0], {"name": "b", "url": "rtsp://h/b2", "detect_fps": 5}]}, [], [], ["b"],
         set(), ["camera b changed: url, detect_fps"]),
        ({"cameras": [BASE["cameras"][0], {**BASE["cameras"][1], "enabled": False}]}, [], ["b"], [], set(),
         ["camera b removed"]),
        ({"model": {"path": "/m/model.onnx", "confidence": 0.5}}, [], [], [], {"detector"},
         ["model changed: confidence"]),
        ({"model": {"path": "/m/other.onnx"}}, [], [], [], {"model"}, ["model changed: path"]),
        ({"mqtt": {"port": 1884}}, [], [], [], {"mqtt"}, ["mqtt changed: port"]),
        ({"node": {"name": "m"}}, [], [], [], {"mqtt"}, ["mqtt changed: node.name"]),
        ({"stats_interval_s": 3}, [], [], [], {"stats_interval"}, ["stats_interval_s 10 -> 3"]),
    ],
)
def test_diff_table(changes, added, removed, changed, flags, summary):
    """Cameras match by name; only edited sections are flagged; the summary says what changed."""
    d = diff(_cfg(), _cfg(**changes))
    assert [c.name for c in d.added] == added
    assert list(d.removed) == removed
    assert [c.name for c in d.changed] == changed
    assert {f for f in ("mqtt", "model", "detector", "stats_interval") if getattr(d, f)} == flags
    assert d.summary == summary
    assert d.empty is (not summary)
