"""Random scene parameters: what varies between training images (and between demo cameras)."""

from __future__ import annotations

import math

import numpy as np

from edge_agent.synthetic.scene import BRACKET, NUT, SCRATCH, WASHER, Belt, Lighting, Part

_BRACKET_PAINTS: tuple[tuple[int, int, int], ...] = (
    (170, 95, 40),  # blue
    (60, 140, 60),  # green
    (40, 180, 215),  # yellow
    (35, 115, 225),  # orange
)
# Parts may overlap (partial occlusion), but an earlier part must stay mostly visible.
MAX_COVERED_FRACTION = 0.35


def random_part(rng: np.random.Generator, class_id: int, cx: float, cy: float) -> Part:
    angle = float(rng.uniform(0, 360))
    if class_id == NUT:
        g = int(rng.integers(135, 195))
        color = (g + int(rng.integers(0, 12)), g, g - int(rng.integers(0, 10)))
        return Part(NUT, cx, cy, float(rng.uniform(0.11, 0.22)), angle, color)
    if class_id == WASHER:
        if rng.random() < 0.3:  # brass
            color = (int(rng.integers(50, 80)), int(rng.integers(140, 170)), int(rng.integers(180, 215)))
        else:
            g = int(rng.integers(185, 235))
            color = (g, g, g)
        return Part(WASHER, cx, cy, float(rng.uniform(0.10, 0.20)), angle, color)
    if class_id == BRACKET:
        paint = _BRACKET_PAINTS[int(rng.integers(len(_BRACKET_PAINTS)))]
        jitter = rng.integers(-20, 21, size=3)
        color = (
            int(np.clip(paint[0] + jitter[0], 0, 255)),
            int(np.clip(paint[1] + jitter[1], 0, 255)),
            int(np.clip(paint[2] + jitter[2], 0, 255)),
        )
        return Part(BRACKET, cx, cy, float(rng.uniform(0.16, 0.28)), angle, color)
    return random_scratch(rng, cx, cy)


def random_scratch(rng: np.random.Generator, cx: float, cy: float) -> Part:
    n = int(rng.integers(4, 7))
    xs = np.linspace(-0.5, 0.5, n)
    # A zig-zag, not a straight cut: alternating offsets keep the box at least ~1/5 as tall as it is
    # long, so a scratch never has a box a few pixels thick whose IoU collapses on a 1 px error.
    ys = np.where(np.arange(n) % 2 == 0, 1.0, -1.0) * rng.uniform(0.06, 0.12, size=n)
    stroke = tuple((float(x), float(y)) for x, y in zip(xs, ys, strict=True))
    g = int(rng.integers(215, 256))
    color = (g, g, g) if rng.random() < 0.7 else (70, 150, 235)  # bright metal or rust
    angle = float(rng.uniform(15, 75)) + (90.0 if rng.random() < 0.5 else 0.0)
    return Part(SCRATCH, cx, cy, float(rng.uniform(0.16, 0.28)), angle, color, stroke)


def _extent(part: Part) -> tuple[float, float, float, float]:
    r = part.size / 2 * (math.sqrt(2) if part.class_id == BRACKET else 1.0)
    return part.cx - r, part.cy - r, part.cx + r, part.cy + r


def _covered_fraction(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    return iw * ih / ((a[2] - a[0]) * (a[3] - a[1]))


def random_parts(rng: np.random.Generator, aspect: float, max_parts: int = 7) -> list[Part]:
    """Parts lying on the belt band, scratches drawn onto some of them or onto the belt."""
    parts: list[Part] = []
    target = int(rng.integers(1, max_parts + 1))
    for _ in range(target * 6):  # bounded rejection sampling
        if len(parts) >= target:
            break
        class_id = int(rng.choice([NUT, WASHER, BRACKET, SCRATCH], p=[0.26, 0.26, 0.24, 0.24]))
        # Centres may sit slightly outside the frame: clipped parts at the edges are realistic.
        part = random_part(rng, class_id, float(rng.uniform(-0.05, aspect + 0.05)),
                           float(rng.uniform(0.18, 0.82)))
        box = _extent(part)
        if any(_covered_fraction(_extent(p), box) > MAX_COVERED_FRACTION
               or _covered_fraction(box, _extent(p)) > MAX_COVERED_FRACTION for p in parts):
            continue
        parts.append(part)
        if class_id != SCRATCH and rng.random() < 0.3:
            # A scratch across this part: the defect the line actually cares about.
            parts.append(random_scratch(rng, part.cx + float(rng.normal(0, part.size * 0.1)),
                                        part.cy + float(rng.normal(0, part.size * 0.1))))
    return parts


def random_belt(rng: np.random.Generator) -> Belt:
    return Belt(
        base_gray=int(rng.integers(40, 85)),
        texture_seed=int(rng.integers(0, 2**31)),
        seam_period=float(rng.uniform(0.4, 0.9)),
        rail_top=float(rng.uniform(0.03, 0.1)),
        rail_bottom=float(rng.uniform(0.9, 0.97)),
    )


def random_lighting(rng: np.random.Generator) -> Lighting:
    warm = float(rng.uniform(-0.08, 0.08))
    return Lighting(
        gain=float(rng.uniform(0.7, 1.3)),
        bias=float(rng.uniform(-20, 20)),
        gradient=float(rng.uniform(-0.5, 0.5)),
        tint_bgr=(1.0 - warm, 1.0, 1.0 + warm),
        noise_sigma=float(rng.choice([0.0, rng.uniform(2, 10)])),
        blur_px=float(rng.choice([0.0, rng.uniform(1, 5)], p=[0.6, 0.4])),
    )
