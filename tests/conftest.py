"""Shared fixtures: the shipped demo model and its calibration set."""

from __future__ import annotations

from pathlib import Path

import pytest

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
