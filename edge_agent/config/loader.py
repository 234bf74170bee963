"""Read a config file into an `EdgeConfig`, or explain every problem with file, line and key.

The YAML is composed once: the node tree gives each key its line, the data built from the same
tree is what pydantic validates. Relative paths are resolved against the config file's folder
here, after validation, so the schema stays free of I/O.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Final

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from edge_agent.config.schema import EdgeConfig, MqttConfig, url_scheme

Loc = tuple[str | int, ...]
_SECRET_KEYS: Final = frozenset({"password"})
_URL_USERINFO = re.compile(r"(//[^/@:]*:)[^/@]*@")
_VALUE_CHARS = 80


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING: Final = _Missing()
"""The value of an issue about a key that is absent."""


@dataclass(frozen=True)
class ConfigIssue:
    file: str
    line: int | None  # 1-based; None when the problem has no place in the file
    key: str  # dotted path such as "cameras[1].stall_timeout_s"; "" for the whole file
    value: object
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        if not self.key:
            return f"{where}: {self.message}"
        return f"{where}: {self.key} = {_show(self.value)}: {self.message}"


class ConfigError(ValueError):
    """A config that cannot be used; `issues` lists every problem found."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        super().__init__("\n".join(str(issue) for issue in issues))
        self.issues = issues


def load_config(path: Path | str) -> EdgeConfig:
    """Read, validate and resolve one config file; raise `ConfigError` on any problem."""
    path = Path(path)
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigIssue(file, None, "", None, f"cannot read: {exc}")]) from exc
    root, data = _parse(file, text)
    issues = _duplicate_keys(file, root, ())
    try:
        config = EdgeConfig.model_validate(data)
    except ValidationError as exc:
        issues += _issues_from(file, root, data, exc)
    if issues:
        raise ConfigError(sorted(issues, key=lambda issue: issue.line or 0))
    return _resolve_paths(config, path.absolute().parent)


def password_from(mqtt: MqttConfig) -> str | None:
    """The MQTT password from `password_file` (stripped) or `password_env`; read at connect time."""
    if mqtt.password_file is not None:
        where, key, name = str(mqtt.password_file), "mqtt.password_file", str(mqtt.password_file)
        try:
            password = mqtt.password_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError([ConfigIssue(where, None, key, name, f"cannot read: {exc}")]) from exc
    elif mqtt.password_env is not None:
        where, key, name = "<environment>", "mqtt.password_env", mqtt.password_env
        password = os.environ.get(name, "")
    else:
        return None
    if not password:
        raise ConfigError([ConfigIssue(where, None, key, name, "the password is not set or empty")])
    return password


def _parse(file: str, text: str) -> tuple[yaml.Node, dict[str, Any]]:
    # SafeLoader builds only plain YAML types: this is yaml.safe_load, split so the node tree
    # (which carries the lines) is kept.
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        # str(exc) spans several lines and quotes the source; the report wants one line.
        mark = exc.problem_mark or exc.context_mark
        what = ": ".join(part for part in (exc.context, exc.problem) if part)
        line = mark.line + 1 if mark is not None else None
        raise ConfigError([ConfigIssue(file, line, "", None, f"invalid YAML: {what}")]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue(file, None, "", None, f"invalid YAML: {exc}")]) from exc
    finally:
        loader.dispose()
    if root is None or data is None:
        raise ConfigError([ConfigIssue(file, 1, "", None,
                                       "the file is empty; expected a mapping with node, mqtt, "
                                       "model and cameras")])
    if not isinstance(data, dict):
        raise ConfigError([ConfigIssue(file, root.start_mark.line + 1, "", _short(data),
                                       f"the top level must be a mapping with node, mqtt, model and "
                                       f"cameras, not {type(data).__name__}")])
    return root, data


def _duplicate_keys(file: str, node: yaml.Node, loc: Loc, seen_nodes: set[int] | None = None,
                    ) -> list[ConfigIssue]:
    # PyYAML keeps the last of two equal keys without a word; an edit that "does nothing" is
    # usually that.
    seen_nodes = set() if seen_nodes is None else seen_nodes
    if id(node) in seen_nodes:  # an alias: checked where it was anchored, and may be cyclic
        return []
    seen_nodes.add(id(node))
    issues: list[ConfigIssue] = []
    if isinstance(node, yaml.MappingNode):
        seen: set[object] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                value = value_node.value if isinstance(value_node, yaml.ScalarNode) else MISSING
                issues.append(ConfigIssue(file, key_node.start_mark.line + 1, _dotted((*loc, key)),
                                          _redact((*loc, key), value), "duplicate key; only one is allowed"))
            seen.add(key)
            issues += _duplicate_keys(file, value_node, (*loc, key), seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            issues += _duplicate_keys(file, item, (*loc, index), seen_nodes)
    return issues


def _line_of(root: yaml.Node, loc: Loc) -> int:
    """The line of the key at `loc`, or of the deepest part of `loc` the file has."""
    node, line = root, root.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            pair = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            if pair is None:
                break
            node, line = pair[1], pair[0].start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _issues_from(file: str, root: yaml.Node, data: object, exc: ValidationError) -> list[ConfigIssue]:
    errors = exc.errors()
    issues = []
    for error in errors:
        loc = (*error["loc"], *error.get("ctx", {}).get("at", ()))
        if _is_echo(error, loc, errors):
            continue
        value = _redact(loc, MISSING if error["type"] == "missing" else _value_at(data, loc))
        issues.append(ConfigIssue(file, _line_of(root, loc), _dotted(loc), value, _message(error, loc)))
    return issues


def _is_echo(error: ErrorDetails, loc: Loc, errors: list[ErrorDetails]) -> bool:
    # A list whose items all failed is also reported "too short" after validation: noise.
    return error["type"] == "too_short" and any(
        other["loc"][: len(loc)] == loc and len(other["loc"]) > len(loc) for other in errors)


def _message(error: ErrorDetails, loc: Loc) -> str:
    kind, field = error["type"], _schema_at(loc)
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        allowed = ", ".join((_schema_at(loc[:-1]) or {}).get("properties", {}))
        return f"unknown key; allowed keys: {allowed}"
    if kind == "literal_error" and field is not None and "enum" in field:
        return "must be one of " + ", ".join(str(choice) for choice in field["enum"])
    if kind == "string_pattern_mismatch" and field is not None:
        return f"must be {field.get('description', 'a string')} (pattern {field.get('pattern')})"
    if kind == "value_error" or "at" in error.get("ctx", {}):
        # The schema's own checks already say what is allowed.
        return str(error["msg"]).removeprefix("Value error, ")
    expected = _expected(field) if field is not None else ""
    return f"must be {expected}" if expected else str(error["msg"])


_TYPE_NAMES: Final = {"integer": "an integer", "number": "a number", "boolean": "true or false",
                      "string": "a string", "array": "a list", "object": "a mapping"}
_BOUNDS: Final = (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="),
                  ("exclusiveMaximum", "<"))


def _expected(field: dict[str, Any]) -> str:
    """What a value must be, in words, from its JSON schema: 'an integer >= 1 and <= 65535'."""
    words = [_TYPE_NAMES.get(field.get("type", ""), "")]
    words.append(" and ".join(f"{op} {field[bound]:g}" for bound, op in _BOUNDS if bound in field))
    if "multipleOf" in field:
        words.append(f"and a multiple of {field['multipleOf']}")
    for low, high, unit in (("minItems", "maxItems", "items"), ("minLength", "maxLength", "characters")):
        if low in field or high in field:
            low_n, high_n = field.get(low, 0), field.get(high, "any number of")
            words.append(f"with {low_n if low_n == high_n else f'{low_n} to {high_n}'} {unit}")
    return " ".join(word for word in words if word)


@cache
def _root_schema() -> dict[str, Any]:
    return EdgeConfig.model_json_schema()


def _schema_at(loc: Loc) -> dict[str, Any] | None:
    """The JSON schema of the value at `loc`, the source of 'what is allowed' in messages."""
    root = _root_schema()
    node: dict[str, Any] | None = root
    for part in loc:
        node = _concrete(node, root)
        if node is None:
            return None
        if isinstance(part, int):
            node = node["prefixItems"][part] if part < len(node.get("prefixItems", ())) else node.get("items")
        else:
            node = node.get("properties", {}).get(part)
    return _concrete(node, root)


def _concrete(node: dict[str, Any] | None, root: dict[str, Any]) -> dict[str, Any] | None:
    """Follow `$ref` and drop the `null` branch of an optional."""
    while node is not None and ("$ref" in node or "anyOf" in node):
        if "$ref" in node:
            node = root["$defs"][node["$ref"].rsplit("/", 1)[-1]]
        else:
            node = next((option for option in node["anyOf"] if option.get("type") != "null"), None)
    return node


def _value_at(data: object, loc: Loc) -> object:
    for part in loc:
        children = data if isinstance(data, dict) else dict(enumerate(data)) if isinstance(data, list) else {}
        if part not in children:
            return MISSING
        data = children[part]
    return _short(data)


def _redact(loc: Loc, value: object) -> object:
    if loc and loc[-1] in _SECRET_KEYS:
        return "<redacted>"
    if isinstance(value, str):
        return _URL_USERINFO.sub(r"\1***@", value)
    return value


def _short(value: object) -> object:
    # A whole section, or a tree grown from YAML aliases, as "the value" would drown the message
    # (or take exponential time to print).
    if isinstance(value, dict):
        return f"<mapping of {len(value)} keys>"
    if isinstance(value, list) and (len(value) > 16 or any(isinstance(v, dict | list) for v in value)):
        return f"<list of {len(value)} items>"
    return value


def _show(value: object) -> str:
    if value is MISSING:
        return "<missing>"
    text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= _VALUE_CHARS else text[: _VALUE_CHARS - 3] + "..."


def _dotted(loc: Loc) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")


def _resolve_paths(config: EdgeConfig, base: Path) -> EdgeConfig:
    mqtt, tls = config.mqtt, config.mqtt.tls
    if tls is not None:
        tls = tls.model_copy(update={k: _under(base, getattr(tls, k)) for k in ("ca", "cert", "key")})
    mqtt = mqtt.model_copy(update={"password_file": _under(base, mqtt.password_file), "tls": tls})
    model = config.model.model_copy(update={"path": _under(base, config.model.path),
                                            "engine_cache": _under(base, config.model.engine_cache)})
    cameras = tuple(
        camera.model_copy(update={"url": str(_under(base, Path(camera.url)))})
        if url_scheme(camera.url) is None else camera
        for camera in config.cameras
    )
    update: dict[str, object] = {"mqtt": mqtt, "model": model, "cameras": cameras}
    if config.store is not None:
        s = config.store
        update["store"] = s.model_copy(update={
            "state_dir": _under(base, s.state_dir), "calibration_dir": _under(base, s.calibration_dir),
            "trusted_keys": tuple(_under(base, k) for k in s.trusted_keys)})
    if config.alarms is not None:
        update["alarms"] = config.alarms.model_copy(update={"spool_dir": _under(base, config.alarms.spool_dir)})
    if config.p2p is not None:
        update["p2p"] = config.p2p.model_copy(update={"token_file": _under(base, config.p2p.token_file)})
    return config.model_copy(update=update)


def _under(base: Path, path: Path | None) -> Path | None:
    if path is None or path.is_absolute():
        return path
    # normpath, not resolve(): keep symlinks the operator named (a model "current" link, say) as
    # links, so what the path points at can change without editing the config.
    return Path(os.path.normpath(base / path))
