"""A stand-in IP camera: serves H.264 MP4 files over RTSP, each looping forever in real time.

Standalone on purpose: it runs under Debian's /usr/bin/python3, whose PyGObject (`gi`) sees the
system's GStreamer and gst-rtsp-server, neither of which installs into a virtualenv. Only the
standard library and `gi` are imported here.

    /usr/bin/python3 rtsp_server.py --port 8554 --mount cam1=demo/videos/cam1.mp4

Prints `READY <port>` on stdout once it accepts connections; logs go to stderr.

How the loop works without re-encoding: at startup each MP4 is remuxed (GStreamer, no decode) to
an Annex-B elementary stream with parameter sets before every keyframe. A mount plays that file
with `multifilesrc loop=true`, so the byte stream simply starts over at the end, and `h264parse`
stamps every frame from the frame rate (its DTS, copied to the PTS). The timestamps keep growing
across loops, and the RTSP server's sinks sync to them, which paces the stream at the video's
frame rate. (Seeking a `qtdemux` pipeline back to the start on EOS would be the alternative, but
that restarts timestamps at zero for a pipeline that clients are already reading.)
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import signal
import sys
import tempfile
from fractions import Fraction
from pathlib import Path

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402

_REMUX_TIMEOUT_S = 30


def _log(message: str) -> None:
    print(f"rtsp_server: {message}", file=sys.stderr, flush=True)


def _make(factory: str, **props: object) -> Gst.Element:
    element = Gst.ElementFactory.make(factory, None)
    if element is None:
        raise RuntimeError(f"GStreamer element {factory!r} is missing (install its plugin package)")
    for key, value in props.items():
        element.set_property(key.replace("_", "-"), value)
    return element


def _link(*elements: Gst.Element) -> None:
    for upstream, downstream in itertools.pairwise(elements):
        if not upstream.link(downstream):
            raise RuntimeError(f"cannot link {upstream.get_name()} to {downstream.get_name()}")


def remux_to_annexb(mp4: Path, out: Path) -> Fraction:
    """Write the MP4's H.264 track to `out` as Annex-B; returns the frame rate."""
    pipeline = Gst.Pipeline.new("remux")
    src = _make("filesrc", location=str(mp4))
    demux = _make("qtdemux")
    # config-interval=-1: SPS/PPS before every IDR, so the stream can start at any keyframe.
    parse = _make("h264parse", config_interval=-1)
    capsfilter = _make("capsfilter", caps=Gst.Caps.from_string(
        "video/x-h264,stream-format=byte-stream,alignment=au"))
    sink = _make("filesink", location=str(out))
    for element in (src, demux, parse, capsfilter, sink):
        pipeline.add(element)
    _link(src, demux)
    _link(parse, capsfilter, sink)

    def on_pad(_demux: Gst.Element, pad: Gst.Pad) -> None:
        caps = pad.get_current_caps() or pad.query_caps(None)
        if caps.get_structure(0).get_name() == "video/x-h264":
            pad.link(parse.get_static_pad("sink"))

    demux.connect("pad-added", on_pad)
    pipeline.set_state(Gst.State.PLAYING)
    try:
        msg = pipeline.get_bus().timed_pop_filtered(
            _REMUX_TIMEOUT_S * Gst.SECOND, Gst.MessageType.EOS | Gst.MessageType.ERROR)
        if msg is None:
            raise RuntimeError(f"{mp4}: remux did not finish in {_REMUX_TIMEOUT_S} s")
        if msg.type == Gst.MessageType.ERROR:
            err, debug = msg.parse_error()
            raise RuntimeError(f"{mp4}: {err.message} ({debug})")
        caps = parse.get_static_pad("src").get_current_caps()
    finally:
        pipeline.set_state(Gst.State.NULL)
    ok, num, den = caps.get_structure(0).get_fraction("framerate") if caps else (False, 0, 1)
    if not ok or num <= 0:
        raise RuntimeError(f"{mp4}: the H.264 track has no frame rate")
    return Fraction(num, den)


def _pts_from_dts(_pad: Gst.Pad, info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
    """Give each frame a PTS equal to its DTS (the stream has no B-frames).

    h264parse stamps a bare elementary stream with DTS only; rtph264pay takes RTP timestamps
    from the PTS and would send every frame with the same one (clients then see pts 0 forever).
    h264timestamper does not help: it derives timestamps from an upstream PTS, and there is none.
    The buffer is h264parse's freshly made output, so nothing else holds it while we stamp it.
    """
    buffer = info.get_buffer()
    buffer.pts = buffer.dts
    return Gst.PadProbeReturn.OK


class LoopingFactory(GstRtspServer.RTSPMediaFactory):  # type: ignore[misc]
    """Media factory for one camera: its Annex-B file, looped and paced at `framerate`."""

    def __init__(self, stream_path: Path, framerate: Fraction) -> None:
        super().__init__()
        self._stream_path = stream_path
        self._framerate = framerate
        # One pipeline for all clients of this mount, like a camera's single encoder.
        self.set_shared(True)
        # Interleaved TCP only: UDP transports would bind ports on every interface, and this
        # server must listen on 127.0.0.1 alone. FFmpeg clients fall back to TCP by themselves.
        self.set_protocols(GstRtsp.RTSPLowerTrans.TCP)

    def do_create_element(self, _url: GstRtspServer.RTSPUrl) -> Gst.Element:
        # Built element by element, not from a launch string, so a path is never parsed as syntax.
        caps = Gst.Caps.from_string("video/x-h264,stream-format=byte-stream")
        caps.set_value("framerate", Gst.Fraction(self._framerate.numerator, self._framerate.denominator))
        src = _make("multifilesrc", location=str(self._stream_path), loop=True, caps=caps)
        parse = _make("h264parse")
        parse.get_static_pad("src").add_probe(Gst.PadProbeType.BUFFER, _pts_from_dts)
        # config-interval=1: SPS/PPS with the first keyframe of every second, for clients that
        # join mid-stream. (-1 would repeat them before every slice of a multi-slice keyframe,
        # which made FFmpeg clients decode duplicate frames.)
        pay = _make("rtph264pay", name="pay0", pt=96, config_interval=1)
        payload_bin = Gst.Bin.new("camera")
        for element in (src, parse, pay):
            payload_bin.add(element)
        _link(src, parse, pay)
        return payload_bin


def _parse_mount(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not name.replace("-", "").replace("_", "").isalnum():
        raise argparse.ArgumentTypeError(f"expected NAME=PATH.mp4 with NAME in [A-Za-z0-9_-], got {text!r}")
    mp4 = Path(path)
    if not mp4.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {mp4}")
    return name, mp4


def main() -> int:
    parser = argparse.ArgumentParser(description="Serve looping H.264 MP4 files over RTSP.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mount", type=_parse_mount, action="append", required=True,
                        metavar="NAME=PATH.mp4")
    parser.add_argument("--workdir", type=Path,
                        help="where to put the remuxed streams (default: a temp dir removed at exit); "
                             "a caller that may SIGKILL this server passes one it cleans up itself")
    args = parser.parse_args()

    Gst.init(None)
    workdir = (contextlib.nullcontext(str(args.workdir)) if args.workdir
               else tempfile.TemporaryDirectory(prefix="rtsp-server-"))
    with workdir as workdir_path:
        tmp = Path(workdir_path)
        server = GstRtspServer.RTSPServer()
        server.set_address("127.0.0.1")
        server.set_service(str(args.port))
        mounts = server.get_mount_points()
        for name, mp4 in args.mount:
            stream_path = tmp / f"{name}.h264"
            try:
                framerate = remux_to_annexb(mp4, stream_path)
            except RuntimeError as exc:
                _log(f"/{name}: {exc}")
                return 1
            mounts.add_factory(f"/{name}", LoopingFactory(stream_path, framerate))
            _log(f"/{name}: {mp4} at {float(framerate):g} fps")
        if server.attach(None) == 0:
            _log(f"cannot listen on 127.0.0.1:{args.port}")
            return 1
        loop = GLib.MainLoop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signum, loop.quit)
        print(f"READY {args.port}", flush=True)
        loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
