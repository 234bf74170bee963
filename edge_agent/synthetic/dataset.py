"""Write synthetic images with YOLO labels, split by seed so held-out sets never leak into training."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge_agent.synthetic.sampling import random_belt, random_lighting, random_parts
from edge_agent.synthetic.scene import CLASS_NAMES, Box, render


@dataclass(frozen=True)
class Sample:
    image: np.ndarray  # HxWx3 BGR uint8
    boxes: list[Box]


def generate(seed: int, count: int, width: int = 640, height: int = 360) -> list[Sample]:
    """`count` random scenes; the same seed always gives the same images."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(count):
        parts = random_parts(rng, width / height)
        img, boxes = render(parts, random_belt(rng), width, height,
                            belt_offset=float(rng.uniform(0, 10)),
                            light=random_lighting(rng), rng=rng)
        samples.append(Sample(img, boxes))
    return samples


def yolo_label_lines(boxes: list[Box], width: int, height: int) -> list[str]:
    lines = []
    for b in boxes:
        cx, cy = (b.x1 + b.x2) / 2 / width, (b.y1 + b.y2) / 2 / height
        w, h = (b.x2 - b.x1) / width, (b.y2 - b.y1) / height
        lines.append(f"{b.class_id} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
    return lines


def write_split(root: Path, split: str, samples: list[Sample]) -> None:
    images, labels = root / "images" / split, root / "labels" / split
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    for i, sample in enumerate(samples):
        h, w = sample.image.shape[:2]
        name = f"{split}_{i:05d}"
        cv2.imwrite(str(images / f"{name}.jpg"), sample.image, [cv2.IMWRITE_JPEG_QUALITY, 92])
        (labels / f"{name}.txt").write_text("\n".join(yolo_label_lines(sample.boxes, w, h)) + "\n")


def write_data_yaml(root: Path, splits: dict[str, str]) -> Path:
    """An ultralytics data file; `splits` maps its keys (train/val/test) to our split folders."""
    lines = [f"path: {root.resolve()}"]
    lines += [f"{key}: images/{folder}" for key, folder in splits.items()]
    lines.append("names:")
    lines += [f"  {i}: {name}" for i, name in enumerate(CLASS_NAMES)]
    path = root / f"data-{'-'.join(splits.values())}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path
