"""Shared fixtures: the shipped demo model and its calibration set."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.devtools.mosquitto import MosquittoServer, mosquitto_unavailable
from edge_agent.devtools.rtsp import RtspServer, rtsp_server_unavailable
from edge_agent.manifest import Manifest, manifest_path_for

REPO = Path(__file__).resolve().parent.parent
DEMO_MODEL = REPO / "models" / "demo-parts.onnx"


@pytest.fixture(scope="session")
def demo_model() -> Path:
    return DEMO_MODEL


@pytest.fixture(scope="session")
def demo_manifest() -> Manifest:
    return Manifest.load(manifest_path_for(DEMO_MODEL))


@pytest.fixture(scope="session")
def calibration_dir(demo_manifest: Manifest) -> Path:
    return DEMO_MODEL.parent / demo_manifest.calibration["dir"]


@pytest.fixture(scope="session")
def servers_available() -> None:
    reason = mosquitto_unavailable() or rtsp_server_unavailable()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def broker(servers_available: None) -> Iterator[MosquittoServer]:
    with MosquittoServer() as server:
        yield server


@pytest.fixture
def cameras(servers_available: None) -> Iterator[dict[str, RtspServer]]:
    """One RTSP server per camera (cam1..cam3), so that one camera can be killed or hung alone."""
    servers = {name: RtspServer({name: REPO / "demo" / "videos" / f"{name}.mp4"})
               for name in ("cam1", "cam2", "cam3")}
    for server in servers.values():
        server.start()
    yield servers
    for server in servers.values():
        server.close()
