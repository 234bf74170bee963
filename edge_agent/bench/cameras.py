"""The bench's cameras: H.264 clips served as live RTSP streams, many mounts over a few servers.

Every camera plays in real time (the server paces the stream at the clip's frame rate), so a
client that falls behind loses frames exactly as it would on a real camera; nothing can be
decoded faster than it is offered.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import av

from edge_agent.devtools.rtsp import RtspServer, rtsp_server_unavailable
from edge_agent.synthetic.video import VideoSpec, write_video

REPO = Path(__file__).resolve().parents[2]
DEMO_VIDEOS = REPO / "demo" / "videos"
CLIP_CACHE = REPO / "build" / "bench-videos"
# Checked on the 2-core bench machine: one server fed 24 demux-only clients at exactly 15.00 fps
# each, using 11% of one core. Beyond 24 cameras the farm starts another server.
MOUNTS_PER_SERVER = 24


@dataclass(frozen=True, slots=True)
class Clip:
    path: Path
    width: int
    height: int
    fps: float
    frames: int

    @classmethod
    def probe(cls, path: Path) -> Clip:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            if stream.codec_context.name != "h264":
                raise ValueError(f"{path}: video codec is {stream.codec_context.name}, the bench needs H.264")
            rate = float(stream.average_rate or 0)
            return cls(path, stream.width, stream.height, rate, stream.frames)

    def describe(self) -> str:
        return f"{self.width}x{self.height} {self.fps:g} fps H.264"


def bench_clips(videos: Path | None, *, generate: int = 3, spec: VideoSpec | None = None) -> list[Clip]:
    """The clips to serve: every .mp4 in `videos`; else the demo videos; else `generate` clips
    rendered once into build/bench-videos (1280x720, 15 fps by default)."""
    if videos is not None:
        paths = sorted(videos.glob("*.mp4"))
        if not paths:
            raise FileNotFoundError(f"no .mp4 files in {videos}")
    elif sorted(DEMO_VIDEOS.glob("*.mp4")):
        paths = sorted(DEMO_VIDEOS.glob("*.mp4"))
    else:
        spec = spec or VideoSpec()
        paths = []
        for k in range(1, generate + 1):
            path = CLIP_CACHE / f"bench-cam{k}.mp4"
            if not path.is_file():
                write_video(path, VideoSpec(width=spec.width, height=spec.height, fps=spec.fps,
                                            seconds=spec.seconds, seed=5000 + k))
            paths.append(path)
    clips = [Clip.probe(p) for p in paths]
    shapes = {(c.width, c.height, c.fps) for c in clips}
    if len(shapes) != 1:
        raise ValueError(f"clips differ in size or frame rate: {sorted(shapes)}; use one format")
    return clips


def farm_layout(count: int, clips: int, per_server: int) -> list[dict[str, int]]:
    """Mount name -> clip index, one dict per server: cam01..camNN, clips used in turn."""
    servers = max(1, math.ceil(count / per_server))
    layout: list[dict[str, int]] = [{} for _ in range(servers)]
    for i in range(count):
        layout[i // per_server][f"cam{i + 1:02d}"] = i % clips
    return layout


class CameraFarm:
    """`count` live cameras over ceil(count / per_server) RTSP server processes."""

    def __init__(self, clips: list[Clip], count: int, *, per_server: int = MOUNTS_PER_SERVER) -> None:
        if count < 1 or not clips:
            raise ValueError(f"need at least one camera and one clip, got {count} and {len(clips)}")
        self.clips = clips
        self.count = count
        self._servers: list[RtspServer] = []
        self._urls: list[str] = []
        self._layout = farm_layout(count, len(clips), per_server)

    @property
    def fps(self) -> float:
        return self.clips[0].fps

    def urls(self, n: int) -> list[str]:
        """The first `n` cameras' URLs."""
        if not 1 <= n <= len(self._urls):
            raise ValueError(f"asked for {n} cameras, the farm has {len(self._urls)}")
        return self._urls[:n]

    def __enter__(self) -> Self:
        why = rtsp_server_unavailable()
        if why:
            raise RuntimeError(f"cannot serve cameras: {why}")
        try:
            for mounts in self._layout:
                server = RtspServer({name: self.clips[i].path for name, i in mounts.items()},
                                    start_timeout_s=60.0)
                self._servers.append(server)
                server.start()
                self._urls += [server.url(name) for name in mounts]
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        for server in self._servers:
            with contextlib.suppress(OSError, RuntimeError):
                server.close()
        self._servers.clear()
        self._urls.clear()
