"""Scripted production-line clips whose analytics outcome is known: the alarm tests' ground truth.

Unlike `video`'s random conveyor, nothing here is random: a static, empty belt and parts that
appear on a given frame, move in a straight line (or stay put) and vanish on a given frame. Each
builder also returns the zone or line the clip is made for, in pixels, and what a correct
analytics stage reports on it.

    python -m edge_agent.synthetic.scenario --out /tmp/clips
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import av
import numpy as np

from edge_agent.synthetic.scene import NUT, WASHER, Belt, Part, part_box, render
from edge_agent.synthetic.video import TruthBox, VideoSpec, _open_encoder

if TYPE_CHECKING:
    from collections.abc import Iterator

PixelPoint = tuple[float, float]
_BELT = Belt(base_gray=62, texture_seed=7)
_NUT_COLOR = (150, 155, 160)
_WASHER_COLOR = (210, 210, 210)


@dataclass(frozen=True)
class Appearance:
    """One part, on frames `first_frame`..`last_frame` inclusive. Positions are the part's centre in
    frame heights (the scene's units); it moves linearly from `start` to `end` (None: stays)."""

    class_id: int
    first_frame: int
    last_frame: int
    start: tuple[float, float]
    end: tuple[float, float] | None = None
    size: float = 0.16

    def centre(self, frame: int) -> tuple[float, float] | None:
        if not self.first_frame <= frame <= self.last_frame:
            return None
        if self.end is None or self.last_frame == self.first_frame:
            return self.start
        f = (frame - self.first_frame) / (self.last_frame - self.first_frame)
        return (self.start[0] + (self.end[0] - self.start[0]) * f, self.start[1] + (self.end[1] - self.start[1]) * f)


@dataclass(frozen=True)
class Scenario:
    name: str
    frame_count: int
    appearances: tuple[Appearance, ...]
    width: int = 640
    height: int = 360
    fps: int = 15
    zone: tuple[PixelPoint, ...] | None = None  # the polygon the clip is made for
    line: tuple[PixelPoint, PixelPoint] | None = None  # start, end; drawn top to bottom
    # What correct analytics report: alarm durations (first to last frame in the zone) and
    # crossings of `line` (left to right is `in`).
    dwell_s: tuple[float, ...] = ()
    crossings_in: int = 0
    crossings_out: int = 0

    @property
    def seconds(self) -> float:
        return self.frame_count / self.fps

    def time_of(self, frame: int) -> float:
        """Seconds from the clip's start to frame `frame` (0-based, the video's pts / fps)."""
        return frame / self.fps

    def parts(self, frame: int) -> list[tuple[int, Part]]:
        """(appearance index, part) of every part on `frame`."""
        parts = []
        for index, appearance in enumerate(self.appearances):
            centre = appearance.centre(frame)
            if centre is not None:
                color = _NUT_COLOR if appearance.class_id == NUT else _WASHER_COLOR
                parts.append((index, Part(appearance.class_id, centre[0], centre[1], appearance.size, 0.0, color)))
        return parts

    def truth(self, frame: int) -> list[TruthBox]:
        """The boxes on `frame` without rendering it; `track_id` is the appearance's index."""
        return [TruthBox(index, box.class_id, box.x1, box.y1, box.x2, box.y2)
                for index, part in self.parts(frame)
                if (box := part_box(part, self.width, self.height)) is not None]

    def frames(self) -> Iterator[tuple[np.ndarray, list[TruthBox]]]:
        """BGR frames and their ground truth."""
        for frame in range(self.frame_count):
            img, _ = render([part for _, part in self.parts(frame)], _BELT, self.width, self.height)
            yield img, self.truth(frame)

    def write(self, path: Path) -> int:
        """Encode as H.264 MP4 the way `edge_agent.synthetic.video` encodes camera footage; returns bytes."""
        spec = VideoSpec(width=self.width, height=self.height, fps=self.fps, seconds=self.seconds)
        path.parent.mkdir(parents=True, exist_ok=True)
        with av.open(str(path), mode="w") as container:
            stream = _open_encoder(container, spec)
            for index, (img, _) in enumerate(self.frames()):
                frame = av.VideoFrame.from_ndarray(img, format="bgr24")
                frame.pts = index
                frame.time_base = Fraction(1, self.fps)
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
        return path.stat().st_size


def _box_zone(cx: float, cy: float, half: float, height: int) -> tuple[PixelPoint, ...]:
    x1, y1, x2, y2 = ((cx - half) * height, (cy - half) * height, (cx + half) * height, (cy + half) * height)
    return ((x1, y1), (x2, y1), (x2, y2), (x1, y2))


def dwell(*, enter_s: float = 1.0, leave_s: float = 3.0, seconds: float = 5.0, fps: int = 15,
          width: int = 640, height: int = 360) -> Scenario:
    """One nut lies in the middle of the zone from `enter_s` to `leave_s` (both frames included),
    on an otherwise empty belt: one alarm lasting leave_s - enter_s (rounded to frames)."""
    first, last = round(enter_s * fps), round(leave_s * fps)
    cx, cy = width / height / 2, 0.5
    return Scenario("dwell", round(seconds * fps), (Appearance(NUT, first, last, (cx, cy)),),
                    width, height, fps, zone=_box_zone(cx, cy, 0.25, height), dwell_s=((last - first) / fps,))


def blips(*, count: int = 3, visible_s: float = 0.4, gap_s: float = 1.5, lead_s: float = 0.5, fps: int = 15,
          width: int = 640, height: int = 360) -> Scenario:
    """A washer shows up in the zone `count` times for `visible_s` each, `gap_s` apart: with a
    debounce above `visible_s` (and `end_after_s` below `gap_s`), no alarm."""
    cx, cy = width / height / 2, 0.5
    period, length = round((visible_s + gap_s) * fps), max(1, round(visible_s * fps))
    first = round(lead_s * fps)
    appearances = tuple(Appearance(WASHER, first + k * period, first + k * period + length - 1, (cx, cy))
                        for k in range(count))
    frames = first + count * period
    return Scenario("blips", frames, appearances, width, height, fps, zone=_box_zone(cx, cy, 0.25, height))


def crossings(*, forward: int = 3, backward: int = 1, pass_s: float = 1.2, gap_s: float = 0.4, fps: int = 15,
              width: int = 640, height: int = 360) -> Scenario:
    """Nuts cross a vertical line in the middle, one at a time: `forward` left to right (`in`),
    then `backward` right to left (`out`). Each pass takes `pass_s` and starts and ends well clear
    of the line, so every one is a crossing and nothing else is."""
    mid = width / height / 2
    travel = 0.35  # frame heights either side of the line
    period, length = round((pass_s + gap_s) * fps), round(pass_s * fps)
    appearances = []
    for k in range(forward + backward):
        left, right = (mid - travel, 0.5), (mid + travel, 0.5)
        start, end = (left, right) if k < forward else (right, left)
        first = round(0.3 * fps) + k * period
        appearances.append(Appearance(NUT, first, first + length - 1, start, end))
    frames = round(0.3 * fps) + (forward + backward) * period
    x = width / 2
    return Scenario("crossings", frames, tuple(appearances), width, height, fps,
                    line=((x, 0.1 * height), (x, 0.9 * height)), crossings_in=forward, crossings_out=backward)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--out", type=Path, required=True, help="output folder")
    args = p.parse_args(argv)
    for scenario in (dwell(), blips(), crossings()):
        path = args.out / f"{scenario.name}.mp4"
        size = scenario.write(path)
        print(f"{path}: {scenario.frame_count} frames {scenario.width}x{scenario.height}@{scenario.fps} "
              f"{size / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
