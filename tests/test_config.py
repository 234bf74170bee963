"""The config layer: every broken file is reported with its line, key, value and what is allowed."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import NamedTuple

import pytest

from edge_agent.config import (
    ConfigError,
    EdgeConfig,
    MqttConfig,
    check_config,
    load_config,
    password_from,
)
from edge_agent.config.loader import MISSING

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"


def _doc(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def _write(tmp_path: Path, text: str, name: str = "edge.yaml") -> Path:
    path = tmp_path / name
    path.write_text(_doc(text), encoding="utf-8")
    return path


VALID = """
    node:
      name: n1
    model:
      path: m.onnx
    cameras:
      - name: a
        url: rtsp://cam/a
"""

class Broken(NamedTuple):
    id: str
    text: str
    line: int
    key: str
    value: object
    allowed: str  # a fragment of the message that says what is allowed


ENV_NAME = "EDGE_TEST_MQTT_PASSWORD"

BROKEN = [Broken(*case) for case in [
    ("syntax", """
        node: {name: n1
        model: [
     """, 2, "", None, "invalid YAML"),
    ("empty", "", 1, "", None, "expected a mapping with node, mqtt, model and cameras"),
    ("comments-only", "# nothing yet\n", 1, "", None, "file is empty"),
    ("top-level-list", "- a\n- b\n", 1, "", ["a", "b"], "top level must be a mapping"),
    ("unknown-key", """
        node:
          name: n1
        mqtt:
          hots: broker
        model:
          path: m.onnx
        cameras:
          - {name: a, url: rtsp://cam/a}
     """, 4, "mqtt.hots", "broker", "unknown key; allowed keys: host, port, client_id"),
    ("password-in-yaml", """
        node: {name: n1}
        mqtt:
          username: u
          password: hunter2
        model: {path: m.onnx}
        cameras: [{name: a, url: rtsp://cam/a}]
     """, 4, "mqtt.password", "<redacted>", "use password_file"),
    ("two-password-sources", """
        node: {name: n1}
        mqtt:
          username: u
          password_file: secret
          password_env: MQTT_PASSWORD
        model: {path: m.onnx}
        cameras: [{name: a, url: rtsp://cam/a}]
     """, 5, "mqtt.password_env", "MQTT_PASSWORD", "password_file or password_env, not both"),
    ("port-out-of-range", """
        node: {name: n1}
        mqtt: {port: 70000}
        model: {path: m.onnx}
        cameras: [{name: a, url: rtsp://cam/a}]
     """, 2, "mqtt.port", 70000, "must be an integer >= 1 and <= 65535"),
    ("stall-timeout-out-of-range", """
        node: {name: n1}
        model: {path: m.onnx}
        cameras:
          - name: a
            url: rtsp://cam/a
          - name: b
            url: rtsp://cam/b
            stall_timeout_s: 0.1
     """, 8, "cameras[1].stall_timeout_s", 0.1, "must be a number >= 0.5 and <= 600"),
    ("confidence-zero", """
        node: {name: n1}
        model:
          path: m.onnx
          confidence: 0
        cameras: [{name: a, url: rtsp://cam/a}]
     """, 4, "model.confidence", 0, "must be a number > 0 and <= 1"),
    ("input-size-not-multiple-of-32", """
        node: {name: n1}
        model:
          path: m.onnx
          input_size: [640, 630]
        cameras: [{name: a, url: rtsp://cam/a}]
     """, 4, "model.input_size[1]", 630, "a multiple of 32"),
    ("bad-qos", """
        node: {name: n1}
        mqtt:
          detections_qos: 3
        model: {path: m.onnx}
        cameras: [{name: a, url: rtsp://cam/a}]
     """, 3, "mqtt.detections_qos", 3, "must be one of 0, 1, 2"),
    ("bad-backend", """
        node: {name: n1}
        model:
          path: m.onnx
          backend: cuda
        cameras: [{name: a, url: rtsp://cam/a}]
     """, 4, "model.backend", "cuda", "must be one of onnxruntime, tensorrt"),
    ("duplicate-camera-names", """
        node: {name: n1}
        model: {path: m.onnx}
        cameras:
          - name: dock
            url: rtsp://cam/a
          - name: dock
            url: rtsp://cam/b
     """, 6, "cameras[1].name", "dock", "duplicate camera name 'dock' (also cameras[0])"),
    ("backoff-max-below-initial", """
        node: {name: n1}
        model: {path: m.onnx}
        cameras:
          - name: a
            url: rtsp://cam/a
            reconnect:
              initial_s: 5
              max_s: 1
     """, 8, "cameras[0].reconnect.max_s", 1, "must be >= initial_s (5)"),
    ("missing-section", """
        node:
          name: n1
        cameras: [{name: a, url: rtsp://cam/a}]
     """, 1, "model", MISSING, "required key is missing"),
    ("missing-camera-url", """
        node: {name: n1}
        model: {path: m.onnx}
        cameras:
          - name: a
            url: rtsp://cam/a
          - name: b
     """, 6, "cameras[1].url", MISSING, "required key is missing"),
    ("wrong-type-port", """
        node: {name: n1}
        mqtt:
          port: abc
        model: {path: m.onnx}
        cameras: [{name: a, url: rtsp://cam/a}]
     """, 3, "mqtt.port", "abc", "must be an integer >= 1 and <= 65535"),
    ("wrong-type-cameras", """
        node: {name: n1}
        model: {path: m.onnx}
        cameras: rtsp://cam/a
     """, 3, "cameras", "rtsp://cam/a", "must be a list with 1 to 256 items"),
    ("no-cameras", """
        node: {name: n1}
        model: {path: m.onnx}
        cameras: []
     """, 3, "cameras", [], "must be a list with 1 to 256 items"),
    ("bad-node-name", """
        node:
          name: line 3/press
        model: {path: m.onnx}
        cameras: [{name: a, url: rtsp://cam/a}]
     """, 2, "node.name", "line 3/press", "1-64 letters, digits, '_' or '-'"),
    ("bad-topic-prefix", """
        node: {name: n1}
        mqtt: {topic_prefix: plant/#}
        model: {path: m.onnx}
        cameras: [{name: a, url: rtsp://cam/a}]
     """, 2, "mqtt.topic_prefix", "plant/#", "without '+', '#'"),
    ("tls-cert-without-key", """
        node: {name: n1}
        mqtt:
          tls:
            ca: ca.pem
            cert: client.pem
        model: {path: m.onnx}
        cameras: [{name: a, url: rtsp://cam/a}]
     """, 5, "mqtt.tls.cert", "client.pem", "cert and key must be given together, or neither"),
    ("model-not-onnx", """
        node: {name: n1}
        model: {path: m.engine}
        cameras: [{name: a, url: rtsp://cam/a}]
     """, 2, "model.path", "m.engine", "must name an .onnx file"),
    ("unsupported-url-scheme", """
        node: {name: n1}
        model: {path: m.onnx}
        cameras:
          - name: a
            url: http://admin:s3cret@cam/a
     """, 5, "cameras[0].url", "http://admin:***@cam/a",
     "use rtsp://, rtsps://, file:// or a plain file path"),
    ("duplicate-yaml-key", """
        node:
          name: n1
          name: n2
        model: {path: m.onnx}
        cameras: [{name: a, url: rtsp://cam/a}]
     """, 3, "node.name", "n2", "duplicate key; only one is allowed"),
]]


@pytest.mark.parametrize("case", BROKEN, ids=[case.id for case in BROKEN])
def test_broken_file_reports_line_key_value_and_what_is_allowed(tmp_path: Path, case: Broken) -> None:
    """Each broken file gives exactly one issue at the expected line and key, saying what is allowed."""
    path = _write(tmp_path, case.text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    [issue] = caught.value.issues
    assert (issue.file, issue.line, issue.key, issue.value) == (str(path), case.line, case.key, case.value)
    assert case.allowed in issue.message


def test_secrets_never_reach_the_report(tmp_path: Path) -> None:
    """An inline MQTT password and RTSP credentials are redacted from every issue and the error text."""
    path = _write(tmp_path, """
        node: {name: n1}
        mqtt: {username: u, password: hunter2, password: hunter3}
        model: {path: m.onnx}
        cameras: [{name: a, url: "ftp://admin:s3cret@cam/a"}]
    """)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    report = str(caught.value)
    assert "hunter" not in report
    keys = [issue.key for issue in caught.value.issues]
    assert keys == ["mqtt.password", "mqtt.password", "cameras[0].url"]
    assert "s3cret" not in report


def test_every_problem_is_reported_sorted_by_line(tmp_path: Path) -> None:
    """Independent problems are all reported at once, in file order."""
    path = _write(tmp_path, """
        node: {name: n1}
        model:
          path: m.onnx
          max_batch: 0
        stats_interval_s: 0
        cameras: [{name: a, url: rtsp://cam/a, detect_fps: 0}]
        extra: 1
    """)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert [(i.line, i.key) for i in caught.value.issues] == [
        (4, "model.max_batch"), (5, "stats_interval_s"), (6, "cameras[0].detect_fps"), (7, "extra")]


def test_missing_file_is_an_issue_without_a_line(tmp_path: Path) -> None:
    """A file that cannot be read is a ConfigError (a ValueError) with no line."""
    with pytest.raises(ValueError, match="cannot read") as caught:
        load_config(tmp_path / "absent.yaml")
    assert isinstance(caught.value, ConfigError)
    assert caught.value.issues[0].line is None


def test_unsafe_yaml_tags_are_refused(tmp_path: Path) -> None:
    """Python object tags are a YAML error, never executed."""
    path = _write(tmp_path, """
        node: !!python/object/apply:os.system ["true"]
    """)
    with pytest.raises(ConfigError, match="invalid YAML") as caught:
        load_config(path)
    assert caught.value.issues[0].line == 1


def test_yaml_aliases_cannot_hang_the_check(tmp_path: Path) -> None:
    """A self-referencing alias and an alias bomb are reported as unknown keys, summarised, quickly."""
    bomb = "\n".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(2, 9))
    path = _write(tmp_path, _doc(VALID) + "loop: &loop [*loop]\nl1: &l1 [x]\n" + bomb + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    issues = caught.value.issues
    assert [issue.key for issue in issues] == ["loop", *(f"l{i}" for i in range(1, 9))]
    assert issues[-1].value == "<list of 10 items>"


@pytest.mark.parametrize("name", ["example.yaml", "demo.yaml"])
def test_shipped_configs_are_valid(name: str) -> None:
    """The example and demo configs in config/ load."""
    config = load_config(CONFIG_DIR / name)
    assert isinstance(config, EdgeConfig)
    assert config.model.path.is_absolute()


def test_demo_config_plays_three_local_files() -> None:
    """The demo config names three looping local clips, the demo model and a local broker."""
    config = load_config(CONFIG_DIR / "demo.yaml")
    repo = CONFIG_DIR.parent
    assert [camera.url for camera in config.cameras] == [
        str(repo / "demo" / "videos" / f"cam{i}.mp4") for i in (1, 2, 3)]
    assert all(camera.is_file and camera.loop and camera.realtime for camera in config.cameras)
    assert config.model.path == repo / "models" / "demo-parts.onnx"
    assert (config.mqtt.host, config.mqtt.port) == ("127.0.0.1", 1883)


def test_defaults_fill_an_minimal_config(tmp_path: Path) -> None:
    """A minimal file gets every documented default, including the derived MQTT client id."""
    config = load_config(_write(tmp_path, VALID))
    assert config.mqtt == MqttConfig()
    assert config.mqtt_client_id == "edge-agent-n1"
    assert (config.model.backend, config.model.max_batch, config.stats_interval_s) == ("onnxruntime", 8, 10)
    camera = config.cameras[0]
    assert (camera.stall_timeout_s, camera.reconnect.initial_s, camera.reconnect.max_s) == (5, 0.5, 30)
    assert not camera.is_file


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    """Model, password, TLS and plain camera paths are made absolute from the file's folder; URLs are kept."""
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    path = _write(conf_dir, """
        node: {name: n1}
        mqtt:
          username: u
          password_file: secrets/mqtt
          tls: {ca: tls/ca.pem, cert: /abs/client.pem, key: tls/client.key}
        model: {path: ../models/m.onnx}
        cameras:
          - {name: a, url: ../videos/a.mp4}
          - {name: b, url: rtsp://cam/b}
          - {name: c, url: "file:///srv/c.mp4"}
          - {name: d, url: /srv/d.mp4}
    """)
    config = load_config(path)
    assert config.model.path == tmp_path / "models" / "m.onnx"
    assert config.mqtt.password_file == conf_dir / "secrets" / "mqtt"
    assert config.mqtt.tls is not None
    assert (config.mqtt.tls.ca, config.mqtt.tls.cert, config.mqtt.tls.key) == (
        conf_dir / "tls" / "ca.pem", Path("/abs/client.pem"), conf_dir / "tls" / "client.key")
    assert [camera.url for camera in config.cameras] == [
        str(tmp_path / "videos" / "a.mp4"), "rtsp://cam/b", "file:///srv/c.mp4", "/srv/d.mp4"]


def test_password_from_file_is_stripped(tmp_path: Path) -> None:
    """The password file's trailing newline is not part of the password."""
    secret = tmp_path / "mqtt"
    secret.write_text("hunter2\n", encoding="utf-8")
    assert password_from(MqttConfig(username="u", password_file=secret)) == "hunter2"


def test_password_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """password_env names the variable read at connect time."""
    monkeypatch.setenv(ENV_NAME, "hunter2")
    assert password_from(MqttConfig(username="u", password_env=ENV_NAME)) == "hunter2"


def test_password_from_reports_what_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unset variable or unreadable file is a ConfigError naming the key; no source means no password."""
    monkeypatch.delenv(ENV_NAME, raising=False)
    with pytest.raises(ConfigError, match="not set or empty") as caught:
        password_from(MqttConfig(username="u", password_env=ENV_NAME))
    assert caught.value.issues[0].key == "mqtt.password_env"
    with pytest.raises(ConfigError, match="cannot read"):
        password_from(MqttConfig(username="u", password_file=tmp_path / "absent"))
    assert password_from(MqttConfig()) is None


def test_models_are_frozen(tmp_path: Path) -> None:
    """A loaded config cannot be changed in place; a reload builds a new one."""
    config = load_config(_write(tmp_path, VALID))
    with pytest.raises(ValueError, match="frozen"):
        config.node.name = "other"  # type: ignore[misc]


def test_check_config_all_valid(tmp_path: Path) -> None:
    """Valid files print 'OK FILE' each and return 0."""
    first, second = _write(tmp_path, VALID, "a.yaml"), _write(tmp_path, VALID, "b.yaml")
    out = io.StringIO()
    assert check_config([first, second], out=out) == 0
    assert out.getvalue() == f"OK {first}\nOK {second}\n"


def test_check_config_prints_one_line_per_problem(tmp_path: Path) -> None:
    """Invalid files print FILE:LINE: KEY = VALUE: MESSAGE per problem and make the result 1."""
    good = _write(tmp_path, VALID, "good.yaml")
    bad = _write(tmp_path, """
        node: {name: n1}
        mqtt: {port: 70000, detections_qos: 5}
        model: {path: m.onnx}
        cameras: [{name: a, url: rtsp://cam/a}]
    """, "bad.yaml")
    broken = _write(tmp_path, "node: [\n", "broken.yaml")
    out = io.StringIO()
    assert check_config([good, bad, broken], out=out) == 1
    assert out.getvalue().splitlines() == [
        f"OK {good}",
        f"{bad}:2: mqtt.port = 70000: must be an integer >= 1 and <= 65535",
        f"{bad}:2: mqtt.detections_qos = 5: must be one of 0, 1, 2",
        (f"{broken}:2: invalid YAML: while parsing a flow node: "
         "expected the node content, but found '<stream end>'"),
    ]


def test_check_config_missing_value_is_spelled_out(tmp_path: Path) -> None:
    """A missing key prints <missing> as its value, at the line of the mapping that lacks it."""
    bad = _write(tmp_path, """
        node: {name: n1}
        model:
          backend: tensorrt
        cameras: [{name: a, url: rtsp://cam/a}]
    """)
    out = io.StringIO()
    assert check_config([bad], out=out) == 1
    assert out.getvalue() == f"{bad}:2: model.path = <missing>: required key is missing\n"
