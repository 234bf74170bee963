"""README's first command: `edge-agent demo` on the bundled videos, with its own private broker."""

import re
import subprocess
import sys

import pytest

from edge_agent.devtools.mosquitto import broker_answers

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_demo_runs_and_shows_detections_from_every_camera(servers_available):
    """With no broker on 127.0.0.1:1883 the demo starts one, and every camera shows detections."""
    if broker_answers("127.0.0.1", 1883, 0.5):
        pytest.skip("a broker already answers on 127.0.0.1:1883; the demo would use it instead")
    out = subprocess.run([sys.executable, "-m", "edge_agent", "--log-level", "WARNING", "demo", "--duration", "8"],
                         capture_output=True, text=True, timeout=90, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "started a private Mosquitto" in out.stdout
    blocks = out.stdout.split("detections received over MQTT")
    last = [line for line in blocks[-1].splitlines() if line.startswith("  cam")]
    for camera, line in zip(("cam1", "cam2", "cam3"), last, strict=True):
        assert line.split()[0] == camera, out.stdout
        fps = float(re.search(r"([\d.]+) fps", line).group(1))
        assert fps > 1.0, line
        assert "objects seen: nothing" not in line, line
