"""Alarms end to end: scripted clips through the running daemon (subprocess) to a real broker.

The exact-count scenarios play their clip once as a file camera at real-time pace (an RTSP server
loops its clips, which would repeat the events); the broker outage plays a looping RTSP camera.
"""

import re
from collections import Counter

import pytest
import yaml
from harness import DaemonProcess, write_config

from edge_agent.devtools.mosquitto import MosquittoServer
from edge_agent.devtools.mqtt_watch import MqttWatch, Received
from edge_agent.devtools.rtsp import RtspServer
from edge_agent.synthetic import scenario

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
PREFIX = "edge/test-node"


def _alarms(messages: list[Received]) -> list[dict]:
    return [m.json() for m in messages if m.topic == f"{PREFIX}/alarms"]


def _config(tmp_path, broker_port: int, url: str, analytics: dict, *, loop: bool) -> object:
    cfg = write_config(tmp_path / "config.yaml", broker_port=broker_port, cameras={"cam1": url})
    doc = yaml.safe_load(cfg.read_text())
    doc["cameras"][0].update({"loop": loop, "analytics": analytics})
    doc["alarms"] = {"spool_dir": str(tmp_path / "spool")}
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
    return cfg


def _zone(clip: scenario.Scenario) -> dict:
    return {"name": "z", "polygon": [[round(x), round(y)] for x, y in clip.zone]}


def _play_once(tmp_path, broker, clip: scenario.Scenario, analytics: dict) -> list[Received]:
    """Run the daemon on the clip (played once) until the camera reports the end of the file."""
    video = tmp_path / f"{clip.name}.mp4"
    clip.write(video)
    cfg = _config(tmp_path, broker.port, str(video), analytics, loop=False)
    with MqttWatch(broker.host, broker.port, f"{PREFIX}/#") as watch, DaemonProcess(cfg, tmp_path / "d.log") as d:
        done = watch.wait_for(lambda m: any(x.topic == f"{PREFIX}/cam1/status" and b"end of file" in x.payload
                                            for x in m), clip.seconds + 60)
        assert done, d.log()[-3000:]
        # SIGTERM drains the alarm spool before `offline`, and one client's QoS 1 messages arrive in
        # order: once `offline` is here, every alarm the clip raised has been delivered.
        assert d.terminate() == 0
        assert watch.wait_for(lambda m: any(x.topic == f"{PREFIX}/available" and x.payload == b"offline"
                                            for x in m), 10)
        return watch.snapshot()


def test_object_in_zone_gives_one_start_and_one_end_with_its_duration(tmp_path, broker):
    """A nut in the zone for 2 s: exactly one `start` and one `end`, duration 2 s (within capture jitter)."""
    clip = scenario.dwell()
    rule = {"name": "nut-in-zone", "classes": ["nut"], "zone": "z", "min_duration_s": 0.5, "end_after_s": 0.5}
    events = _alarms(_play_once(tmp_path, broker, clip, {"zones": [_zone(clip)], "rules": [rule]}))
    states = [e["state"] for e in events]
    assert states.count("start") == 1, events
    assert states.count("end") == 1, events
    start, end = events[0], events[-1]
    assert (start["state"], end["state"]) == ("start", "end")
    assert start["id"] == end["id"]
    assert (start["camera"], start["rule"], start["zone"], start["labels"]) == ("cam1", "nut-in-zone", "z", ["nut"])
    assert start["model"]["name"] == "demo-parts"
    assert end["duration_s"] == pytest.approx(clip.dwell_s[0], abs=0.25)


def test_appearances_shorter_than_the_debounce_raise_nothing(tmp_path, broker):
    """Washers visible 0.4 s at a time, debounce 1 s: no alarm at all."""
    clip = scenario.blips()
    rule = {"name": "washer-in-zone", "classes": ["washer"], "zone": "z", "min_duration_s": 1.0, "end_after_s": 0.5}
    messages = _play_once(tmp_path, broker, clip, {"zones": [_zone(clip)], "rules": [rule]})
    assert _alarms(messages) == []
    # The washers were seen: the zone count went up (so silence is the debounce, not blindness).
    counts = [m for m in messages if m.topic == f"{PREFIX}/cam1/counts/z/washer"]
    assert any(m.payload != b"0" for m in counts)


def test_line_crossings_are_counted_exactly(tmp_path, broker):
    """Three nuts cross left to right and one back: crossings in 3, out 1, one alarm per crossing."""
    clip = scenario.crossings()
    (x1, y1), (x2, y2) = clip.line
    analytics = {"lines": [{"name": "gate", "start": [round(x1), round(y1)], "end": [round(x2), round(y2)]}],
                 "rules": [{"name": "nut-crossed", "classes": ["nut"], "line": "gate"}]}
    messages = _play_once(tmp_path, broker, clip, analytics)
    retained = {m.topic.removeprefix(f"{PREFIX}/cam1/"): int(m.payload) for m in messages
                if m.topic.startswith(f"{PREFIX}/cam1/crossings/gate/nut/")}
    assert retained == {"crossings/gate/nut/in": clip.crossings_in, "crossings/gate/nut/out": clip.crossings_out}
    starts = [e for e in _alarms(messages) if e["state"] == "start"]
    assert len(starts) == clip.crossings_in + clip.crossings_out


def test_alarms_raised_while_the_broker_is_down_arrive_in_order_once(tmp_path, servers_available):
    """Broker stopped while alarms fire, restarted later: every alarm delivered, in order, none twice."""
    clip = scenario.dwell(seconds=4.0, enter_s=0.8, leave_s=2.4)
    video = tmp_path / "dwell.mp4"
    clip.write(video)
    rule = {"name": "nut-in-zone", "classes": ["nut"], "zone": "z", "min_duration_s": 0.3, "end_after_s": 0.4}
    with MosquittoServer(persistence=True) as broker, RtspServer({"cam1": video}) as camera:
        cfg = _config(tmp_path, broker.port, camera.url("cam1"), {"zones": [_zone(clip)], "rules": [rule]},
                      loop=True)
        with MqttWatch(broker.host, broker.port, f"{PREFIX}/#", session="alarm-panel") as watch, \
                DaemonProcess(cfg, tmp_path / "d.log") as d:
            assert watch.wait_for(lambda m: sum(e["state"] == "end" for e in _alarms(m)) >= 1, 60), d.log()[-3000:]
            broker.stop()
            fired_while_down = len(re.findall(r"alarm nut-in-zone (?:start|end)", d.log()))
            # At least one more start/end pair fires (the clip loops every 4 s) with no broker.
            assert d.wait_for_log_count(r"alarm nut-in-zone (?:start|end)", fired_while_down + 2, 20)
            broker.start()
            logged = len(re.findall(r"alarm nut-in-zone (?:start|end)", d.log()))
            assert watch.wait_for(lambda m: sum(e["state"] in ("start", "end") for e in _alarms(m)) >= logged, 60)
        events = _alarms(watch.snapshot())
    keys = [(e["id"], e["seq"]) for e in events]
    assert len(keys) == len(set(keys)), "an alarm message arrived twice"
    assert [e["started_at"] for e in events] == sorted(e["started_at"] for e in events), "out of order"
    per_alarm = Counter(e["id"] for e in events if e["state"] in ("start", "end"))
    complete = [i for i, n in per_alarm.items() if n == 2]
    assert len(complete) >= 2
    for alarm_id in complete:
        states = [e["state"] for e in events if e["id"] == alarm_id]
        assert states[0] == "start"
        assert states[-1] == "end"
