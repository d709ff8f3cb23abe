"""Frames of one video source, resized by FFmpeg's scaler, with their times in seconds.

A source is anything PyAV opens: a file, an rtsp/http/udp URL, a FIFO, a v4l2 device.  Pure:
no processes, no shared memory (jobs/streams runs this in a decoder process).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Iterator

import av
import numpy as np

from .errors import VideoError

LIVE_PREFIXES = ("rtsp://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")


def is_live(source: str) -> bool:
    """A source that runs in real time by nature (a network stream, a device, a FIFO)."""
    import os
    import stat
    if source.startswith(LIVE_PREFIXES) or source.startswith("/dev/video"):
        return True
    try:
        return stat.S_ISFIFO(os.stat(source).st_mode)
    except OSError:
        return False


@dataclass(frozen=True)
class SourceInfo:
    fps: Fraction | None  # the stream's average rate, when it says
    width: int
    height: int


def probe_rate(source: str) -> Fraction | None:
    """A file's average frame rate (None for a live source or when the file does not say)."""
    if is_live(source):
        return None
    try:
        with av.open(source) as c:
            if not c.streams.video:
                return None
            rate = c.streams.video[0].average_rate
            return Fraction(rate) if rate else None
    except (av.FFmpegError, OSError):
        return None


def frames(source: str, size: tuple[int, int], align: str = "pts",
           realtime: bool = False, t0: float | None = None,
           options: dict | None = None) -> Iterator[tuple[float, np.ndarray]]:
    """(time in seconds, RGB array of `size` (W, H)) for each decoded frame of `source`.

    align="pts": the time is the frame's timestamp from the source's first frame;
    "arrival": seconds since `t0` (time.monotonic()) when the frame was decoded.  With
    `realtime`, a file is paced so that frame t comes out at t0 + t.  Raises VideoError
    for a source that cannot be opened or has no video stream."""
    width, height = size
    t0 = time.monotonic() if t0 is None else t0
    live = is_live(source)
    try:
        container = av.open(source, options=options or {}, timeout=(10.0, 10.0))
    except (av.FFmpegError, OSError) as exc:
        raise VideoError(f"cannot open {source}: {exc}", error_class="unreadable") from exc
    with container:
        if not container.streams.video:
            raise VideoError(f"{source} has no video stream", error_class="no_video_stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        first: float | None = None
        for frame in _decoded(container, stream, source, live):
            if frame.pts is None and frame.time is None:
                continue
            ft = float(frame.time) if frame.time is not None else 0.0
            if first is None:
                first = ft
            t = ft - first if align == "pts" else time.monotonic() - t0
            if realtime and align == "pts":
                wait = t0 + t - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            rgb = frame.reformat(width=width, height=height, format="rgb24").to_ndarray()
            yield t, rgb


def _decoded(container: Any, stream: Any, source: str, live: bool) -> Iterator[Any]:
    """The stream's frames.  A live stream that breaks after its first frame has ended (an
    HTTP stream without a length ends with EIO): the frames still in the decoder come out
    and the source ends normally; a file that breaks is a decode_error."""
    got = False
    try:
        for packet in container.demux(stream):
            for frame in packet.decode():
                got = True
                yield frame
        return
    except av.FFmpegError as exc:
        if not got:
            raise VideoError(f"cannot decode {source}: {exc}", error_class="decode_error") from exc
        if not live:
            raise VideoError(f"decoding {source} failed part-way: {exc}",
                             error_class="decode_error") from exc
    try:  # the end of a live stream: what the decoder holds
        yield from stream.codec_context.decode(None)
    except av.FFmpegError:
        pass


def write_mp4(path: str, frames: np.ndarray, fps: float, codec: str = "h264") -> None:
    """Encode `frames` (F, H, W, 3) RGB uint8 as a video file at `fps` (path's container)."""
    from .encode import encoder_settings
    encoder, options = encoder_settings(codec)
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(path, "w") as out:
        stream = out.add_stream(encoder, rate=rate, options=dict(options))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.time_base = 1 / rate
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame = frame.reformat(format="yuv420p")
            frame.pts, frame.time_base, frame.pict_type = i, 1 / rate, 0
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
