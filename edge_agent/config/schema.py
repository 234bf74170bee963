"""The configuration schema: one small frozen model per section, validation only.

Nothing here reads files, the environment or hardware: the same models validate a file being
checked on a laptop and a reload on a node. Paths are resolved and secrets read by the loader.

Cross-field checks raise `PydanticCustomError` with an `at` entry in the context: the location,
relative to the failing model, of the key the reader should look at. The loader appends it to the
error location so the report points at that key's line instead of the whole section.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from edge_agent.analytics.config import AnalyticsConfig

NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_NAME_HELP = "1-64 letters, digits, '_' or '-'"
# Levels separated by single '/', no wildcards, no empty level, no leading or trailing '/'.
_TOPIC_PREFIX_PATTERN = r"^[^/+#\x00]+(/[^/+#\x00]+)*$"
_ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_CAMERA_SCHEMES = ("rtsp", "rtsps", "file")

Name = Annotated[str, Field(pattern=NAME_PATTERN, description=_NAME_HELP)]
Side = Annotated[int, Field(ge=32, le=4096, multiple_of=32)]


def _fail(kind: str, message: str, *at: str | int) -> PydanticCustomError:
    return PydanticCustomError(kind, message, {"at": at})


def url_scheme(url: str) -> str | None:
    """The lower-case scheme of `url`, or None for a plain file path."""
    match = _SCHEME.match(url)
    return match.group(1).lower() if match else None


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class NodeConfig(_Section):
    name: Name


class TlsConfig(_Section):
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    @model_validator(mode="after")
    def _cert_with_key(self) -> Self:
        if (self.cert is None) != (self.key is None):
            present = "cert" if self.cert is not None else "key"
            raise _fail("tls_pair", "cert and key must be given together, or neither", present)
        return self


class MqttConfig(_Section):
    host: str = Field(default="127.0.0.1", min_length=1, max_length=253)
    port: int = Field(default=1883, ge=1, le=65535)
    client_id: str | None = Field(default=None, min_length=1, max_length=128)
    topic_prefix: str = Field(
        default="edge", max_length=128, pattern=_TOPIC_PREFIX_PATTERN,
        description="topic levels joined by '/', without '+', '#', or a leading or trailing '/'",
    )
    username: str | None = Field(default=None, min_length=1, max_length=256)
    password_file: Path | None = None
    password_env: str | None = Field(default=None, max_length=256, pattern=_ENV_NAME_PATTERN,
                                     description="an environment variable name")
    tls: TlsConfig | None = None
    detections_qos: Literal[0, 1, 2] = 0
    keepalive_s: int = Field(default=30, ge=5, le=3600)

    @model_validator(mode="before")
    @classmethod
    def _no_inline_password(cls, data: object) -> object:
        # Config files get copied into tickets, repos and MQTT status messages; a secret must not.
        if isinstance(data, dict) and "password" in data:
            raise _fail("password_inline", "a password is not allowed in the config file; "
                        "use password_file (a file holding it) or password_env (an env var)", "password")
        return data

    @model_validator(mode="after")
    def _one_password_source(self) -> Self:
        if self.password_file is not None and self.password_env is not None:
            raise _fail("password_sources", "give password_file or password_env, not both",
                        "password_env")
        if (self.password_file or self.password_env) and self.username is None:
            source = "password_file" if self.password_file is not None else "password_env"
            raise _fail("password_without_user", "a password needs a username", source)
        return self


class ModelConfig(_Section):
    path: Path = Field(description="the .onnx file; its manifest sits next to it")
    backend: Literal["onnxruntime", "tensorrt"] = "onnxruntime"
    confidence: float = Field(default=0.25, gt=0, le=1)
    iou: float = Field(default=0.7, gt=0, le=1)
    max_batch: int = Field(default=8, ge=1, le=64)
    max_wait_ms: int = Field(default=10, ge=0, le=1000)
    threads: int | None = Field(default=None, ge=1, le=256,
                                description="ONNX Runtime intra-op threads per worker (default 1 when several "
                                            "workers share the cores)")
    workers: int | None = Field(default=None, ge=1, le=64,
                                description="inference threads taking batches (default: one per core on CPU, "
                                            "two per GPU with tensorrt); a change takes effect at restart")
    providers: tuple[Literal["tensorrt", "cuda", "cpu"], ...] | None = Field(
        default=None, min_length=1, max_length=3,
        description="onnxruntime: execution providers in order of preference (tensorrt and cuda need the "
                    "onnxruntime-gpu package); default: cuda where this build has it, else cpu")
    gpus: tuple[Annotated[int, Field(ge=0, le=63)], ...] = Field(
        default=(0,), min_length=1, max_length=16,
        description="tensorrt, or onnxruntime with GPU providers: CUDA device numbers, one engine/session each")
    engine_build: Literal["if-missing", "never"] = Field(
        default="if-missing", description="tensorrt: build a missing engine at start, or refuse to start "
                                          "('never': engines must be pre-built with `edge-agent model build`)")
    engine_cache: Path | None = Field(default=None, description="tensorrt: engine cache folder "
                                                                "(default: engines/ beside the model)")
    input_size: tuple[Side, Side] | None = Field(default=None, description="[height, width]")

    @field_validator("path")
    @classmethod
    def _is_onnx(cls, path: Path) -> Path:
        if path.suffix.lower() != ".onnx":
            raise ValueError("must name an .onnx file (TensorRT engines are built from it on the node)")
        return path

    @model_validator(mode="after")
    def _providers_for_onnxruntime(self) -> Self:
        if self.providers is not None and self.backend != "onnxruntime":
            raise _fail("providers_backend", "only applies to backend onnxruntime", "providers")
        if self.providers is not None and len(set(self.providers)) != len(self.providers):
            raise _fail("providers_twice", f"lists a provider twice: {list(self.providers)}", "providers")
        return self

    @field_validator("gpus")
    @classmethod
    def _distinct_gpus(cls, gpus: tuple[int, ...]) -> tuple[int, ...]:
        if len(set(gpus)) != len(gpus):
            raise ValueError(f"lists a GPU twice: {list(gpus)}")
        return gpus


class ReconnectConfig(_Section):
    initial_s: float = Field(default=0.5, ge=0.05, le=60)
    max_s: float = Field(default=30, ge=0.1, le=3600)

    @model_validator(mode="after")
    def _max_not_below_initial(self) -> Self:
        if self.max_s < self.initial_s:
            raise _fail("backoff_order", f"must be >= initial_s ({self.initial_s:g})", "max_s")
        return self


class CameraConfig(_Section):
    name: Name
    url: str = Field(min_length=1, max_length=2048)
    enabled: bool = True
    detect_fps: float | None = Field(default=None, gt=0, le=240)
    # Checked against the model's class names at startup: the model is not known here.
    classes: tuple[Annotated[str, Field(min_length=1, max_length=128)], ...] | None = Field(
        default=None, min_length=1, max_length=1024)
    stall_timeout_s: float = Field(default=5, ge=0.5, le=600)
    reconnect: ReconnectConfig = Field(default_factory=ReconnectConfig)
    open_timeout_s: float = Field(default=5, ge=0.5, le=120)
    loop: bool = True
    realtime: bool = True
    analytics: AnalyticsConfig | None = None  # zones, lines, tracking and alarm rules

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        scheme = url_scheme(url)
        if scheme is not None and scheme not in _CAMERA_SCHEMES:
            raise ValueError(f"unsupported scheme {scheme}://; use rtsp://, rtsps://, file:// "
                             "or a plain file path")
        return url

    @property
    def is_file(self) -> bool:
        """True for a local file (played at its frame rate when `realtime`, looped when `loop`)."""
        return url_scheme(self.url) in (None, "file")


class MetricsConfig(_Section):
    """Prometheus metrics and /healthz over HTTP; loopback by default, as it needs no auth."""

    enabled: bool = True
    host: str = Field(default="127.0.0.1", min_length=1, max_length=253)
    port: int = Field(default=9108, ge=1, le=65535)


class ProbationConfig(_Section):
    """After a swap, the new model is watched; a regression rolls back to the previous one."""

    window_s: float = Field(default=60, ge=0, le=86400)  # 0: no probation
    min_batches: int = Field(default=20, ge=1, le=1_000_000)  # judged only after this many
    max_latency_factor: float = Field(default=1.5, gt=1, le=100)  # infer ms/image vs before the swap
    max_error_rate: float = Field(default=0.05, ge=0, le=1)  # failed batches / batches


class StoreConfig(_Section):
    """Model versions: a content-addressed store; only manifests signed by these keys are accepted."""

    state_dir: Path
    trusted_keys: tuple[Path, ...] = Field(min_length=1)
    # Calibration images stay on each node (only ONNX travels); default: the bootstrap model's.
    calibration_dir: Path | None = None
    latency_factor: float = Field(default=1.5, gt=1, le=100)  # candidate vs active, before a swap
    probation: ProbationConfig = Field(default_factory=ProbationConfig)


class PeersConfig(_Section):
    """This node's model server for its neighbours, and where it fetches from."""

    listen_host: str = Field(default="127.0.0.1", min_length=1, max_length=253)
    listen_port: int = Field(default=8765, ge=1, le=65535)
    advertise_url: str | None = Field(default=None, pattern=r"^https?://", max_length=2048)
    token_file: Path  # bearer token shared by the fleet; never in this file
    peers: tuple[Annotated[str, Field(pattern=r"^https?://", max_length=2048)], ...] = ()
    rate_limit_bps: int | None = Field(default=None, ge=1024)


class AlarmsConfig(_Section):
    """Alarm delivery: events are written to this spool first and leave it only when the broker
    has acknowledged them, so alarms raised while the broker is away arrive after it returns."""

    spool_dir: Path
    max_messages: int = Field(default=10_000, ge=10, le=10_000_000)
    max_bytes: int = Field(default=64 << 20, ge=1 << 16, le=1 << 40)


class EdgeConfig(_Section):
    node: NodeConfig
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    model: ModelConfig
    cameras: tuple[CameraConfig, ...] = Field(min_length=1, max_length=256)
    stats_interval_s: float = Field(default=10, ge=1, le=3600)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    watch_config: bool = Field(default=True, description="reload when the file changes on disk")
    store: StoreConfig | None = None
    p2p: PeersConfig | None = None
    alarms: AlarmsConfig | None = None

    @model_validator(mode="after")
    def _spool_for_rules(self) -> Self:
        with_rules = [c.name for c in self.cameras if c.analytics and c.analytics.rules]
        if with_rules and self.alarms is None:
            raise _fail("alarms_needed", f"cameras {with_rules} have alarm rules: add an `alarms` section "
                        "with a spool_dir, where alarms wait while the broker is away")
        return self

    @field_validator("cameras")
    @classmethod
    def _unique_names(cls, cameras: tuple[CameraConfig, ...]) -> tuple[CameraConfig, ...]:
        # Names key the topics and the reload diff; two cameras with one name would overwrite.
        seen: dict[str, int] = {}
        for index, camera in enumerate(cameras):
            if camera.name in seen:
                raise _fail("duplicate_camera", f"duplicate camera name {camera.name!r} "
                            f"(also cameras[{seen[camera.name]}])", index, "name")
            seen[camera.name] = index
        return cameras

    @property
    def mqtt_client_id(self) -> str:
        """The configured client id, or `edge-agent-<node>`."""
        return self.mqtt.client_id or f"edge-agent-{self.node.name}"
