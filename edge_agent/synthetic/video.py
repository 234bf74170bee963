"""H.264 videos of the production line: the demo cameras' footage, with per-frame ground truth.

The belt moves left to right at a constant speed; every part rides it at the same speed and new
parts enter from the left. The encoder is set up the way a camera would be (H.264 main profile,
no B-frames, a fixed keyframe interval, one slice per frame), so the RTSP path sees realistic
streams.

    python -m edge_agent.synthetic.video --out demo/videos --count 3 --seconds 20
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import av
import numpy as np

from edge_agent.synthetic.sampling import (
    random_belt,
    random_lighting,
    random_part,
    random_parts,
    random_scratch,
)
from edge_agent.synthetic.scene import BRACKET, CLASS_NAMES, NUT, SCRATCH, WASHER, Part, part_box, render

if TYPE_CHECKING:
    from collections.abc import Iterator

# Same class mix as the training scenes, so the cameras show what the model was trained on.
_CLASS_IDS = (NUT, WASHER, BRACKET, SCRATCH)
_CLASS_P = (0.28, 0.28, 0.26, 0.18)
_SCRATCHED_PART_P = 0.25
_SPAWN_GAP = 0.02  # minimum clearance between a newly entering part and the others, in frame heights


@dataclass(frozen=True)
class VideoSpec:
    """What to render and how to encode it."""

    width: int = 1280
    height: int = 720
    fps: int = 15
    seconds: float = 20.0
    seed: int = 0
    gop_s: float = 1.0  # keyframe interval
    crf: int = 30  # the scene is mostly flat: a moderate quality keeps demo files small
    belt_speed: float = 0.15  # frame heights per second
    parts_per_s: float = 0.45  # mean arrival rate of new parts at the left edge

    def __post_init__(self) -> None:
        if self.width % 2 or self.height % 2 or self.width <= 0 or self.height <= 0:
            raise ValueError(f"width and height must be positive and even (yuv420p), got "
                             f"{self.width}x{self.height}")
        if not 1 <= self.fps <= 120:
            raise ValueError(f"fps must be in 1..120, got {self.fps}")
        if self.seconds <= 0 or self.gop_s <= 0:
            raise ValueError(f"seconds and gop_s must be > 0, got {self.seconds}, {self.gop_s}")
        if not 0 <= self.crf <= 51:
            raise ValueError(f"crf must be in 0..51, got {self.crf}")

    @property
    def frame_count(self) -> int:
        return round(self.seconds * self.fps)

    @property
    def gop_frames(self) -> int:
        return max(1, round(self.gop_s * self.fps))


@dataclass(frozen=True)
class TruthBox:
    """A part's box in one frame; `track_id` stays the same while the part crosses the view."""

    track_id: int
    class_id: int
    x1: float
    y1: float
    x2: float
    y2: float


@dataclass
class _Rider:
    track_id: int
    part: Part


def _extent(part: Part) -> tuple[float, float]:
    """Horizontal half-extent bound of a part, in frame heights (brackets rotate their square)."""
    return part.size / 2 * (math.sqrt(2) if part.class_id == BRACKET else 1.0), part.size / 2


class Conveyor:
    """Steps the scene one frame at a time: belt and parts advance by the same distance."""

    def __init__(self, spec: VideoSpec) -> None:
        self._spec = spec
        self._rng = np.random.default_rng(spec.seed)
        self._aspect = spec.width / spec.height
        self._belt = random_belt(self._rng)
        # Sensor noise is fresh every frame and would dominate the bitrate; the model's training
        # images cover noise, the demo footage does not need it.
        self._light = dataclasses.replace(random_lighting(self._rng), noise_sigma=0.0)
        self._step = spec.belt_speed / spec.fps
        self._offset = float(self._rng.uniform(0, 10))
        self._next_id = 0
        self._riders: list[_Rider] = []
        for part in random_parts(self._rng, self._aspect):
            self._add(part)

    def _add(self, part: Part) -> None:
        self._riders.append(_Rider(self._next_id, part))
        self._next_id += 1

    def _clear_of_others(self, part: Part) -> bool:
        half_w, half_h = _extent(part)
        for rider in self._riders:
            other_w, other_h = _extent(rider.part)
            if (abs(rider.part.cx - part.cx) < half_w + other_w + _SPAWN_GAP
                    and abs(rider.part.cy - part.cy) < half_h + other_h + _SPAWN_GAP):
                return False
        return True

    def _maybe_spawn(self) -> None:
        if self._rng.random() >= self._spec.parts_per_s / self._spec.fps:
            return
        class_id = int(self._rng.choice(_CLASS_IDS, p=_CLASS_P))
        part = random_part(self._rng, class_id, 0.0, float(self._rng.uniform(0.18, 0.82)))
        part.cx = -_extent(part)[0]  # just outside the left edge: it slides in
        if not self._clear_of_others(part):
            return  # no room at the entry this frame; the belt keeps its gaps
        self._add(part)
        if class_id != SCRATCH and self._rng.random() < _SCRATCHED_PART_P:
            self._add(random_scratch(self._rng, part.cx + float(self._rng.normal(0, part.size * 0.1)),
                                     part.cy + float(self._rng.normal(0, part.size * 0.1))))

    def _advance(self) -> None:
        self._offset += self._step
        for rider in self._riders:
            rider.part.cx += self._step
        self._riders = [r for r in self._riders if r.part.cx - _extent(r.part)[0] <= self._aspect]
        self._maybe_spawn()

    def frames(self) -> Iterator[tuple[np.ndarray, list[TruthBox]]]:
        """BGR frames and their ground truth, `spec.frame_count` of them."""
        width, height = self._spec.width, self._spec.height
        for _ in range(self._spec.frame_count):
            parts = [r.part for r in self._riders]
            img, _ = render(parts, self._belt, width, height, belt_offset=self._offset,
                            light=self._light, rng=self._rng)
            truth = [TruthBox(r.track_id, b.class_id, b.x1, b.y1, b.x2, b.y2)
                     for r in self._riders if (b := part_box(r.part, width, height)) is not None]
            yield img, truth
            self._advance()


def _open_encoder(container: Any, spec: VideoSpec) -> Any:
    if "libx264" not in av.codecs_available:
        raise RuntimeError("this PyAV build has no libx264 encoder; install a wheel that bundles it")
    gop = spec.gop_frames
    stream = container.add_stream("libx264", rate=Fraction(spec.fps), options={
        "preset": "veryfast",
        "tune": "zerolatency",
        "profile": "main",
        "crf": str(spec.crf),
        # zerolatency turns on sliced threads (several slices per frame); cameras mostly send one
        # slice per frame, and multi-slice keyframes have tripped RTSP clients in our tests.
        "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0:sliced-threads=0",
    })
    stream.width, stream.height, stream.pix_fmt = spec.width, spec.height, "yuv420p"
    stream.codec_context.time_base = Fraction(1, spec.fps)
    return stream


def write_video(path: Path, spec: VideoSpec, truth_path: Path | None = None) -> int:
    """Encode the scene into an H.264 MP4 at `path`; returns its size in bytes.

    With `truth_path`, also writes every frame's boxes there as JSON.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    truth_frames: list[list[list[float]]] = []
    with av.open(str(path), mode="w") as container:
        stream = _open_encoder(container, spec)
        for index, (img, truth) in enumerate(Conveyor(spec).frames()):
            frame = av.VideoFrame.from_ndarray(img, format="bgr24")
            frame.pts = index
            frame.time_base = Fraction(1, spec.fps)
            container.mux(stream.encode(frame))
            truth_frames.append([[b.track_id, b.class_id, round(b.x1, 1), round(b.y1, 1),
                                  round(b.x2, 1), round(b.y2, 1)] for b in truth])
        container.mux(stream.encode(None))
    if truth_path is not None:
        write_truth(truth_path, spec, truth_frames)
    return path.stat().st_size


def write_truth(path: Path, spec: VideoSpec, frames: list[list[list[float]]]) -> None:
    doc = {
        "width": spec.width, "height": spec.height, "fps": spec.fps, "seed": spec.seed,
        "classes": list(CLASS_NAMES),
        "box_fields": ["track_id", "class_id", "x1", "y1", "x2", "y2"],
        "frames": frames,  # frames[i] holds the boxes of the frame with pts i / fps
    }
    path.write_text(json.dumps(doc, separators=(",", ":")) + "\n")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = VideoSpec()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--count", type=int, default=3, help="cameras: writes cam1.mp4..camN.mp4")
    p.add_argument("--seconds", type=float, default=defaults.seconds)
    p.add_argument("--width", type=int, default=defaults.width)
    p.add_argument("--height", type=int, default=defaults.height)
    p.add_argument("--fps", type=int, default=defaults.fps)
    p.add_argument("--gop-s", type=float, default=defaults.gop_s, help="keyframe interval, seconds")
    p.add_argument("--crf", type=int, default=defaults.crf)
    p.add_argument("--seed", type=int, default=1000, help="camera k uses seed + k - 1")
    p.add_argument("--prefix", default="cam")
    p.add_argument("--truth", action=argparse.BooleanOptionalAction, default=True,
                   help="write <name>.json with per-frame boxes next to each video")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    if args.count < 1:
        raise SystemExit("--count must be >= 1")
    for k in range(1, args.count + 1):
        spec = VideoSpec(width=args.width, height=args.height, fps=args.fps, seconds=args.seconds,
                         seed=args.seed + k - 1, gop_s=args.gop_s, crf=args.crf)
        path = args.out / f"{args.prefix}{k}.mp4"
        size = write_video(path, spec, path.with_suffix(".json") if args.truth else None)
        print(f"{path}: {spec.frame_count} frames {spec.width}x{spec.height}@{spec.fps} "
              f"{size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
