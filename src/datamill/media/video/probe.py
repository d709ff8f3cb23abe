"""Probe a video: timestamps, keyframes and stream parameters from a demux-only pass."""
from __future__ import annotations

import contextlib
import errno
import math
import os
from array import array
from bisect import bisect_left
from dataclasses import dataclass
from fractions import Fraction

import av
import av.error

from .errors import VideoError

PathLike = str | os.PathLike


@dataclass(frozen=True)
class VideoInfo:
    """What the planner needs to know about a video, from a demux-only pass.

    Frame indexes are in presentation order, 0 = the frame with the smallest timestamp.
    `keyframes` holds the indexes of keyframes and `keyframe_pts` their timestamps (in
    `time_base`); all other per-frame data is deliberately not kept.  `width` x `height` is
    the coded size; `rotation` is the clockwise rotation (0/90/180/270) that shows the
    video upright, and `display_width` x `display_height` the size as shown (pixels of a
    non-square sample aspect ratio stretched, then rotated).  `declared_frames` is the frame count the container
    header claims (0 if it does not say); fewer demuxed frames mean a truncated file.
    """

    width: int
    height: int
    rotation: int
    display_width: int
    display_height: int
    fps: Fraction
    time_base: Fraction
    frame_count: int
    keyframes: tuple[int, ...]
    keyframe_pts: tuple[int, ...]
    duration: float
    codec: str
    pix_fmt: str
    has_audio: bool
    start_pts: int
    declared_frames: int = 0


def open_input(path: PathLike) -> av.container.InputContainer:
    """Open a media file for reading; a missing file raises FileNotFoundError unchanged."""
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, "no such file", os.fspath(path))
    try:
        return av.open(os.fspath(path), "r")
    except av.error.FFmpegError as exc:
        raise VideoError(f"cannot open as media: {exc}", "unreadable") from exc


def find_video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    """The first real video stream (cover art in audio files does not count)."""
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    raise VideoError("no video stream", "no_video_stream")


def find_audio_stream(container: av.container.InputContainer) -> av.audio.stream.AudioStream | None:
    return container.streams.audio[0] if container.streams.audio else None


def display_size(width: int, height: int, sample_aspect: Fraction | None, rotation: int) -> tuple[int, int]:
    """Width x height as shown: non-square pixels stretched (width scaled by the sample
    aspect ratio), then turned by `rotation`."""
    if sample_aspect and sample_aspect > 0 and sample_aspect != 1:
        width = max(1, math.floor(width * sample_aspect + Fraction(1, 2)))
    return (height, width) if rotation in (90, 270) else (width, height)


def clockwise(frame_rotation: int | float) -> int:
    """FFmpeg's display-matrix angle (counter-clockwise) -> clockwise quarter turns in degrees."""
    return int(round(-frame_rotation / 90.0)) % 4 * 90


def probe_video(path: PathLike) -> VideoInfo:
    """Read a video's timestamps, keyframes and stream parameters without decoding it.

    One demux pass over the video stream's packets; only the first frame is decoded, to
    read the display rotation that FFmpeg attaches to decoded frames.  Raises `VideoError`
    ``unreadable``, ``no_video_stream`` or ``empty``.  A file damaged part way through is
    probed up to the damage (compare `frame_count` with `declared_frames`).
    """
    with open_input(path) as container:
        stream = find_video_stream(container)
        has_audio = find_audio_stream(container) is not None
        timestamps = array("q")
        keyframe_ts: list[int] = []
        max_ts: int | None = None
        last_duration = 0
        rotation: int | None = None
        pix_fmt = stream.codec_context.pix_fmt or ""
        decode_budget = 64  # packets we are ready to decode to find the first frame
        try:
            for packet in container.demux(stream):
                if packet.size == 0 or packet.is_discard:
                    continue
                ts = packet.pts if packet.pts is not None else packet.dts
                if ts is None:
                    ts = timestamps[-1] + 1 if timestamps else 0
                timestamps.append(ts)
                if packet.is_keyframe:
                    keyframe_ts.append(ts)
                if max_ts is None or ts > max_ts:
                    max_ts, last_duration = ts, packet.duration or 0
                if rotation is None and decode_budget > 0:
                    decode_budget -= 1
                    with contextlib.suppress(av.error.FFmpegError):
                        frames = stream.decode(packet)
                        if frames:
                            rotation = clockwise(frames[0].rotation)
                            pix_fmt = frames[0].format.name
        except av.error.FFmpegError as exc:
            if not timestamps:
                raise VideoError(f"cannot read packets: {exc}", "unreadable") from exc
        if not timestamps:
            raise VideoError("the video stream has no frames", "empty")
        if rotation is None:
            rotation = _metadata_rotation(stream)
        ordered = sorted(timestamps)
        count = len(ordered)
        time_base = Fraction(stream.time_base) if stream.time_base else Fraction(1, 90000)
        start = ordered[0]
        rate = stream.average_rate or stream.guessed_rate
        if not rate and count > 1 and ordered[-1] > start:
            rate = Fraction(count - 1) / ((ordered[-1] - start) * time_base)
        fps = Fraction(rate) if rate else Fraction(25)
        if not last_duration:
            last_duration = (ordered[-1] - start) / (count - 1) if count > 1 else float(1 / (fps * time_base))
        keyframe_pts = tuple(sorted(set(keyframe_ts)))
        width, height = stream.codec_context.width, stream.codec_context.height
        display = display_size(width, height, stream.sample_aspect_ratio, rotation)
        return VideoInfo(
            width=width,
            height=height,
            rotation=rotation,
            display_width=display[0],
            display_height=display[1],
            fps=fps,
            time_base=time_base,
            frame_count=count,
            keyframes=tuple(bisect_left(ordered, ts) for ts in keyframe_pts),
            keyframe_pts=keyframe_pts,
            duration=float((ordered[-1] - start + last_duration) * time_base),
            codec=stream.codec_context.name,
            pix_fmt=pix_fmt,
            has_audio=has_audio,
            start_pts=start,
            declared_frames=stream.frames or 0,
        )


def _metadata_rotation(stream: av.video.stream.VideoStream) -> int:
    """Old-style 'rotate' tag (clockwise degrees), for files whose first frame won't decode."""
    try:
        return int(float(stream.metadata.get("rotate", 0))) % 360 // 90 * 90
    except ValueError:
        return 0
