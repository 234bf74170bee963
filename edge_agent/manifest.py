"""Model manifests: what a model file is, where it came from, and how to check it.

A manifest travels with every model version. It names the file by sha256, so a model is checked
against its manifest before anything loads it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MANIFEST_SCHEMA = 1
_CHUNK = 1 << 20


class ManifestError(ValueError):
    """A manifest that cannot be read or does not describe its file."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class Manifest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_: int = Field(default=MANIFEST_SCHEMA, alias="schema")
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    version: str = Field(min_length=1, max_length=64)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(gt=0)
    format: Literal["onnx"] = "onnx"
    input_size: tuple[int, int]  # (height, width) the model was trained at
    class_names: tuple[str, ...] = Field(min_length=1)
    created: str
    parent: str | None = None
    # A new version may change the class list only when its manifest says so (validated on swap).
    class_change: bool = False
    training: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    calibration: dict[str, Any] = Field(default_factory=dict)

    def __init__(self, **data: Any) -> None:
        # Accept the field name as well as the on-disk key for the schema version.
        if "schema_" in data:
            data["schema"] = data.pop("schema_")
        super().__init__(**data)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, mode="json")

    @classmethod
    def load(cls, path: Path) -> Manifest:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            raise ManifestError(f"{path}: {exc}") from exc

    def verify_file(self, path: Path) -> None:
        """Raise ManifestError unless `path` has exactly the size and sha256 this manifest names."""
        size = path.stat().st_size
        if size != self.size_bytes:
            raise ManifestError(f"{path}: size {size} bytes, manifest says {self.size_bytes}")
        digest = sha256_file(path)
        if digest != self.sha256:
            raise ManifestError(f"{path}: sha256 {digest}, manifest says {self.sha256}")


def manifest_path_for(model_path: Path) -> Path:
    """`models/x.onnx` -> `models/x.manifest.json`."""
    return model_path.with_name(model_path.stem + ".manifest.json")
