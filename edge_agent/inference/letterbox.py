"""Letterboxing: fit a frame into the model's input keeping its aspect ratio, and map boxes back.

The arithmetic (rounding of the scaled size, the -0.1/+0.1 split of odd padding, pad value 114)
follows Ultralytics' LetterBox exactly, so our detections match theirs on the same ONNX file.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

PAD_VALUE = 114
_PAD_FLOAT = np.float32(PAD_VALUE / 255.0)
_SCALE = np.float32(255.0)


def input_shape(src_hw: tuple[int, int], target_hw: tuple[int, int], *, rect: bool,
                stride: int = 32) -> tuple[int, int]:
    """Model input (h, w) for a frame: the full target, or with `rect` the smallest stride-aligned
    rectangle that holds the scaled frame (a 16:9 camera at 320 runs at 320x192, not 320x320)."""
    if not rect:
        return target_hw
    r = min(target_hw[0] / src_hw[0], target_hw[1] / src_hw[1])
    new_h, new_w = max(round(src_hw[0] * r), 1), max(round(src_hw[1] * r), 1)
    return new_h + (target_hw[0] - new_h) % stride, new_w + (target_hw[1] - new_w) % stride


@dataclass(frozen=True, slots=True)
class Letterbox:
    """Where a source frame lands inside the model input."""

    src_h: int
    src_w: int
    dst_h: int
    dst_w: int
    new_h: int  # size of the scaled frame inside the input
    new_w: int
    top: int
    left: int

    @classmethod
    def fit(cls, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> Letterbox:
        (src_h, src_w), (dst_h, dst_w) = src_hw, dst_hw
        if min(src_h, src_w, dst_h, dst_w) <= 0:
            raise ValueError(f"letterbox needs positive sizes, got source {src_hw} and input {dst_hw}")
        r = min(dst_h / src_h, dst_w / src_w)
        new_h, new_w = max(round(src_h * r), 1), max(round(src_w * r), 1)
        top, left = round((dst_h - new_h) / 2 - 0.1), round((dst_w - new_w) / 2 - 0.1)
        return cls(src_h, src_w, dst_h, dst_w, new_h, new_w, top, left)

    def boxes_to_source(self, xyxy: np.ndarray) -> np.ndarray:
        """Map [K, 4] boxes in input pixels to the source frame's pixels, clipped to it (in place)."""
        xyxy[:, [0, 2]] -= self.left
        xyxy[:, [1, 3]] -= self.top
        xyxy[:, [0, 2]] *= self.src_w / self.new_w
        xyxy[:, [1, 3]] *= self.src_h / self.new_h
        xyxy[:, [0, 2]] = np.clip(xyxy[:, [0, 2]], 0, self.src_w)
        xyxy[:, [1, 3]] = np.clip(xyxy[:, [1, 3]], 0, self.src_h)
        return xyxy


def resize_for(img: np.ndarray, lb: Letterbox, scratch: np.ndarray | None = None) -> np.ndarray:
    """The frame scaled to its place in the input (no copy if it already has that size)."""
    if img.shape[0] == lb.new_h and img.shape[1] == lb.new_w:
        return img
    if scratch is not None and scratch.shape[:2] != (lb.new_h, lb.new_w):
        scratch = None
    return cv2.resize(img, (lb.new_w, lb.new_h), dst=scratch, interpolation=cv2.INTER_LINEAR)


def write_input(scaled: np.ndarray, lb: Letterbox, dst: np.ndarray, *, bgr: bool) -> None:
    """Write an HWC uint8 frame already scaled to (new_h, new_w) into one [3, H, W] float slot of a
    preallocated batch: channel flip, layout change and normalisation in one pass, padding only
    where the frame does not cover."""
    if dst.shape != (3, lb.dst_h, lb.dst_w):
        raise ValueError(f"batch slot is {dst.shape}, letterbox needs (3, {lb.dst_h}, {lb.dst_w})")
    if scaled.shape[:2] != (lb.new_h, lb.new_w) or scaled.ndim != 3 or scaled.shape[2] != 3:
        raise ValueError(f"frame is {scaled.shape}, letterbox needs ({lb.new_h}, {lb.new_w}, 3)")
    bottom, right = lb.top + lb.new_h, lb.left + lb.new_w
    dst[:, : lb.top, :] = _PAD_FLOAT
    dst[:, bottom:, :] = _PAD_FLOAT
    dst[:, lb.top : bottom, : lb.left] = _PAD_FLOAT
    dst[:, lb.top : bottom, right:] = _PAD_FLOAT
    chw = scaled.transpose(2, 0, 1)
    if bgr:
        chw = chw[::-1]
    # Division, not multiplication by 1/255: bit-identical to the reference preprocessing.
    np.divide(chw, _SCALE, out=dst[:, lb.top : bottom, lb.left : right])
