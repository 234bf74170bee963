"""Procedural production-line scenes: a conveyor belt carrying parts, some of them scratched.

The demo model is trained on these images and the demo cameras play videos of them, so the
renderer is the single source of truth for what "a nut" or "a scratch" looks like. Geometry is
expressed relative to the frame height, so the same scene renders at 640x360 for training and at
1280x720 for the cameras with objects at the same relative size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

CLASS_NAMES: tuple[str, ...] = ("nut", "washer", "bracket", "scratch")
NUT, WASHER, BRACKET, SCRATCH = range(len(CLASS_NAMES))

# A clipped object is labelled only while this much of its box is still in the frame; a sliver
# at the edge is not something a detector can be asked to find.
MIN_VISIBLE_FRACTION = 0.45


@dataclass(frozen=True)
class Lighting:
    """Global photometric conditions of one frame."""

    gain: float = 1.0  # multiplies intensities (exposure)
    bias: float = 0.0  # added after the gain
    gradient: float = 0.0  # -1..1, left-to-right brightness ramp strength
    tint_bgr: tuple[float, float, float] = (1.0, 1.0, 1.0)
    noise_sigma: float = 0.0
    blur_px: float = 0.0  # horizontal motion blur length in pixels at 360 rows


@dataclass
class Part:
    """One object on the belt; positions and sizes are fractions of the frame height."""

    class_id: int
    cx: float  # centre x / frame height (so 16:9 frames span 0..1.78)
    cy: float
    size: float  # outer diameter / frame height
    angle_deg: float = 0.0
    color_bgr: tuple[int, int, int] = (170, 170, 170)
    # Scratch geometry: polyline vertices relative to the centre, in units of `size`.
    stroke: tuple[tuple[float, float], ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Box:
    class_id: int
    x1: float
    y1: float
    x2: float
    y2: float


def _rotate(points: np.ndarray, angle_deg: float) -> np.ndarray:
    a = math.radians(angle_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return np.asarray(points @ rot.T)


def _hexagon(radius: float) -> np.ndarray:
    angles = np.deg2rad(np.arange(6) * 60.0)
    return np.stack([np.cos(angles), np.sin(angles)], axis=1) * radius


def _bracket_outline(size: float) -> np.ndarray:
    # An L-shaped plate whose bounding square has side `size`, centred on the origin.
    s, t = size, size * 0.38
    pts = np.array([[0, 0], [s, 0], [s, t], [t, t], [t, s], [0, s]], dtype=np.float64)
    return pts - s / 2


def _shade(color: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    b, g, r = (min(255, max(0, round(c * factor))) for c in color)
    return (b, g, r)


def _outline_points(part: Part, px_per_unit: float) -> np.ndarray:
    """Polygon (in pixels, relative to centre) that bounds the part's visible shape."""
    radius = part.size * px_per_unit / 2
    if part.class_id == NUT:
        return _rotate(_hexagon(radius), part.angle_deg)
    if part.class_id == WASHER:
        angles = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        return np.stack([np.cos(angles), np.sin(angles)], axis=1) * radius
    if part.class_id == BRACKET:
        return _rotate(_bracket_outline(part.size * px_per_unit), part.angle_deg)
    stroke = np.asarray(part.stroke, dtype=np.float64) * part.size * px_per_unit
    return _rotate(stroke, part.angle_deg)


def _scratch_thickness(height: int) -> int:
    # About 3 px at the model's 320-wide input: thinner strokes were the one class the first demo
    # model could not learn well (AP50 0.58 vs 0.99 for the parts).
    return max(3, round(height / 60))


def _draw_part(img: np.ndarray, part: Part, px_per_unit: float) -> None:
    centre = np.array([part.cx, part.cy]) * px_per_unit
    pts = _outline_points(part, px_per_unit) + centre
    ipts = np.round(pts * 16).astype(np.int32)  # 4 fractional bits: smooth sub-pixel motion
    shift = 4
    radius_px = part.size * px_per_unit / 2
    if part.class_id == SCRATCH:
        thick = _scratch_thickness(img.shape[0])
        dark = _shade(part.color_bgr, 0.35)
        cv2.polylines(img, [ipts + 16], isClosed=False, color=dark, thickness=thick + 1,
                      lineType=cv2.LINE_AA, shift=shift)
        cv2.polylines(img, [ipts], isClosed=False, color=part.color_bgr, thickness=thick,
                      lineType=cv2.LINE_AA, shift=shift)
        return
    # Drop shadow first so parts read as objects lying on the belt.
    shadow_off = np.round(np.array([0.06, 0.08]) * radius_px * 16).astype(np.int32)
    cv2.fillPoly(img, [ipts + shadow_off], (18, 18, 18), lineType=cv2.LINE_AA, shift=shift)
    cv2.fillPoly(img, [ipts], part.color_bgr, lineType=cv2.LINE_AA, shift=shift)
    cv2.polylines(img, [ipts], isClosed=True, color=_shade(part.color_bgr, 0.55),
                  thickness=max(1, round(radius_px / 14)), lineType=cv2.LINE_AA, shift=shift)
    c16 = tuple(int(v) for v in np.round(centre * 16))
    if part.class_id == NUT:
        cv2.circle(img, c16, round(radius_px * 0.62 * 16), _shade(part.color_bgr, 1.18),
                   max(1, round(radius_px / 10)), cv2.LINE_AA, shift)
        cv2.circle(img, c16, round(radius_px * 0.42 * 16), (35, 35, 38), -1, cv2.LINE_AA, shift)
    elif part.class_id == WASHER:
        cv2.circle(img, c16, round(radius_px * 0.78 * 16), _shade(part.color_bgr, 1.15),
                   max(1, round(radius_px / 12)), cv2.LINE_AA, shift)
        cv2.circle(img, c16, round(radius_px * 0.45 * 16), (40, 40, 42), -1, cv2.LINE_AA, shift)
    else:  # bracket: two mounting holes along the arms
        s = part.size * px_per_unit
        for hole in ((0.3, -0.31), (-0.31, 0.3)):
            hp = _rotate(np.array([hole]) * s, part.angle_deg)[0] + centre
            cv2.circle(img, tuple(int(v) for v in np.round(hp * 16)), round(s * 0.07 * 16),
                       (30, 30, 30), -1, cv2.LINE_AA, shift)


def part_box(part: Part, width: int, height: int) -> Box | None:
    """Tight pixel box of a part, clipped to the frame; None when too little of it is visible."""
    px_per_unit = float(height)
    pts = _outline_points(part, px_per_unit) + np.array([part.cx, part.cy]) * px_per_unit
    pad = _scratch_thickness(height) / 2 + 1 if part.class_id == SCRATCH else 0.5
    x1, y1 = pts.min(axis=0) - pad
    x2, y2 = pts.max(axis=0) + pad
    full_area = (x2 - x1) * (y2 - y1)
    cx1, cy1, cx2, cy2 = max(x1, 0.0), max(y1, 0.0), min(x2, width), min(y2, height)
    if cx2 <= cx1 or cy2 <= cy1:
        return None
    if (cx2 - cx1) * (cy2 - cy1) < MIN_VISIBLE_FRACTION * full_area:
        return None
    return Box(part.class_id, float(cx1), float(cy1), float(cx2), float(cy2))


@dataclass(frozen=True)
class Belt:
    """The conveyor: static look plus an offset that advances as the belt moves."""

    base_gray: int = 62
    texture_seed: int = 0
    seam_period: float = 0.55  # distance between belt seams, in frame heights
    rail_top: float = 0.07  # rail bands, as fractions of the height
    rail_bottom: float = 0.93


def render_belt(belt: Belt, width: int, height: int, offset: float = 0.0) -> np.ndarray:
    """Background frame; `offset` (in frame heights) scrolls the belt's texture and seams."""
    rng = np.random.default_rng(belt.texture_seed)
    # Texture tile twice the frame width so scrolling never runs off its end.
    tile_w = width * 2
    noise = rng.normal(0.0, 7.0, size=(height, tile_w)).astype(np.float32)
    tex = np.asarray(cv2.GaussianBlur(noise, (0, 0), sigmaX=2.5, sigmaY=0.8), dtype=np.float32)
    shift_px = round(offset * height) % tile_w
    tex = np.roll(tex, shift_px, axis=1)[:, :width]
    img = np.full((height, width), float(belt.base_gray), dtype=np.float32) + tex
    period_px = belt.seam_period * height
    first = (offset * height) % period_px
    for x in np.arange(first, width, period_px):
        xi = round(x)
        img[:, max(0, xi - 1) : xi + 2] -= 18.0
    top, bottom = round(belt.rail_top * height), round(belt.rail_bottom * height)
    img[:top] = 150.0 + tex[:top] * 0.5
    img[bottom:] = 150.0 + tex[bottom:] * 0.5
    img[top : top + 2] = 205.0
    img[bottom - 2 : bottom] = 205.0
    return np.repeat(np.clip(img, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)


def apply_lighting(img: np.ndarray, light: Lighting, rng: np.random.Generator) -> np.ndarray:
    height, width = img.shape[:2]
    out = img.astype(np.float32)
    if light.blur_px >= 1.0:
        k = max(1, round(light.blur_px * height / 360))
        kernel = np.full((1, k), 1.0 / k, dtype=np.float32)
        out = np.asarray(cv2.filter2D(out, -1, kernel), dtype=np.float32)
    ramp = 1.0 + light.gradient * np.linspace(-0.5, 0.5, width, dtype=np.float32)
    out *= ramp[None, :, None]
    out *= np.asarray(light.tint_bgr, dtype=np.float32)[None, None, :]
    out = out * light.gain + light.bias
    if light.noise_sigma > 0:
        out += rng.normal(0.0, light.noise_sigma, size=out.shape).astype(np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)


def render(
    parts: list[Part],
    belt: Belt,
    width: int,
    height: int,
    *,
    belt_offset: float = 0.0,
    light: Lighting | None = None,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, list[Box]]:
    """Render a frame and the boxes of every part visible in it (drawn in list order)."""
    img = render_belt(belt, width, height, belt_offset)
    for part in parts:
        _draw_part(img, part, float(height))
    if light is not None:
        img = apply_lighting(img, light, rng or np.random.default_rng(0))
    boxes = [b for p in parts if (b := part_box(p, width, height)) is not None]
    return img, boxes
