"""Open a model file for inference: verify it against its manifest, load the backend, size inputs."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.inference.detector import Detector, DetectorSettings, model_input_size
from edge_agent.inference.runner import Backend, RunnerError, load_runner
from edge_agent.manifest import Manifest, manifest_path_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    manifest: Manifest
    detector: Detector

    @property
    def label(self) -> str:
        return f"{self.manifest.name}@{self.manifest.version} ({self.manifest.sha256[:12]})"


def open_model(
    model_path: Path,
    *,
    backend: Backend = "onnxruntime",
    settings: DetectorSettings | None = None,
    runner_options: dict[str, Any] | None = None,
    warmup: bool = True,
    input_size: tuple[int, int] | None = None,
    manifest: Manifest | None = None,
) -> LoadedModel:
    """Load `model_path` after checking its size and sha256 against its manifest (the one given,
    e.g. from the model store, or the `.manifest.json` beside the file).

    A model whose bytes do not match its manifest is never loaded: the manifest is what was
    tested, signed and shipped; anything else is an unknown file.
    """
    manifest = manifest or Manifest.load(manifest_path_for(model_path))
    manifest.verify_file(model_path)
    runner = load_runner(model_path, backend, **(runner_options or {}))
    input_hw, dynamic_hw = model_input_size(runner, input_size or manifest.input_size)
    if input_size and not dynamic_hw and input_hw != input_size:
        raise RunnerError(f"{model_path.name} has a fixed input {input_hw}; input_size {input_size} "
                          "needs a model exported with dynamic height and width")
    settings = settings or DetectorSettings()
    detector = Detector(runner, manifest.class_names, input_hw=input_hw, dynamic_hw=dynamic_hw,
                        settings=settings)
    if warmup:
        runner.warmup(1, *input_hw)
    loaded = LoadedModel(manifest, detector)
    log.info("model %s loaded with %s, input %sx%s%s", loaded.label, backend, *input_hw,
             " (rect)" if detector.rect else "", extra={"event": "model_loaded", "sha256": manifest.sha256})
    return loaded
