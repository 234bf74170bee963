"""Configuration: the schema (`schema`), reading files (`loader`), and `check-config` (`check`)."""

from edge_agent.config.check import check_config
from edge_agent.config.loader import ConfigError, ConfigIssue, load_config, password_from
from edge_agent.config.schema import (
    CameraConfig,
    EdgeConfig,
    ModelConfig,
    MqttConfig,
    NodeConfig,
    ReconnectConfig,
    TlsConfig,
)

__all__ = [
    "CameraConfig",
    "ConfigError",
    "ConfigIssue",
    "EdgeConfig",
    "ModelConfig",
    "MqttConfig",
    "NodeConfig",
    "ReconnectConfig",
    "TlsConfig",
    "check_config",
    "load_config",
    "password_from",
]
