"""Video: probe a file, plan clip tasks over it, cut clips (decode, resize, encode) with PyAV.

The `clips` job uses these in three steps:

1. `probe_video` reads packet timestamps and keyframe flags only (a demux pass, no frame
   decoding beyond the first one), so the driver learns the frame count and where the
   keyframes are in presentation order, quickly, even for an hour-long file.
2. `plan_clip_tasks` cuts the timeline into clips and groups consecutive clips into tasks of
   a few hundred frames, each starting at a keyframe, so that different workers can decode
   different ranges of one long video at the same time.
3. `cut_clips` runs one task: seek to its keyframe, decode, resize each frame as it comes
   (swscale, in C), rotate it upright if the file says so, and stream it straight into one
   encoder per clip.  Memory does not grow with the video or the clip length (except for
   ``fmt="npy"``, whose array is the output).

`output_size` turns the user's size options into an exact, even output size.

All functions are pure: no processes, no global state.  Failures raise `VideoError` with a
stable `error_class`, or come back as failed `ClipResult`s when only some clips are hit.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import math
import os
import shutil
from array import array
from bisect import bisect_left, bisect_right
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable

import av
import av.error
import numpy as np
from av.video.reformatter import VideoReformatter

from ..engine.atomic import atomic_path, rename_noreplace, temp_path_for
from ..engine.errors import ItemError

PathLike = str | os.PathLike

ERROR_CLASSES = ("unreadable", "no_video_stream", "empty", "decode_error", "encode_error",
                 "size_too_large")
CODECS = ("h264", "hevc", "vp9", "av1", "mpeg4", "copy")
FORMATS = ("mp4", "frames", "npy")
AUDIO_MODES = ("drop", "keep")

# Default encoder settings per codec: (FFmpeg encoder, default crf, default preset, crf range).
# h264 defaults to x264 "ultrafast" at crf 23: the only preset that keeps the whole cut
# (decode + area scale + encode) at >= 70% of decode-only speed, with a PSNR above OpenCV's
# mp4v writer.  Measured with cut_clips on a synthetic 1080p H.264 source with B-frames,
# 128 frames, one thread, CPU time (noisy, shared 2-core machine); PSNR against the same
# area-scaled frames; mp4v = cv2.VideoWriter 'mp4v' at default quality:
#   640x360  mp4v                 36.0 dB  1267 kB
#            x264 ultrafast crf23 38.9 dB   828 kB  5.7 ms/frame (decode alone ~4.4)
#            x264 superfast crf23 38.8 dB   586 kB  8.8 ms/frame
#            x264 veryfast  crf23 34.4 dB   326 kB  9.6 ms/frame (psy tuning costs PSNR)
#   1920x1080 (encoder alone)     mp4v 38.0 dB 3812 kB | ultrafast 44.4 dB 2714 kB |
#                                 superfast 44.6 dB 1669 kB | veryfast 41.0 dB 955 kB
# Pass preset="superfast" for ~30% smaller files at ~1.5x the encoding cost.
_ENCODERS: dict[str, tuple[str, int, str | None, tuple[int, int]]] = {
    "h264": ("libx264", 23, "ultrafast", (0, 51)),
    "hevc": ("libx265", 28, "ultrafast", (0, 51)),
    "vp9": ("libvpx-vp9", 32, "8", (0, 63)),
    "av1": ("libsvtav1", 35, "10", (0, 63)),
    "mpeg4": ("mpeg4", 4, None, (1, 31)),  # "crf" is mpeg4's fixed quantiser (qscale)
}
_FF_QP2LAMBDA = 118
# How far (seconds) demuxed video may run ahead of a clip's end before we stop waiting for
# that clip's audio (a file whose audio track ends early, or is badly interleaved).
_AUDIO_SLACK_S = 5.0


class VideoError(ItemError):
    """A video (or a task over it) that cannot be processed.

    `error_class` is one of: ``unreadable`` (cannot open, not a media file, corrupt header),
    ``no_video_stream``, ``empty`` (zero frames), ``decode_error`` (error mid-stream),
    ``encode_error``, ``size_too_large`` (an output size the encode path cannot make).
    """

    error_class = "decode_error"


# --------------------------------------------------------------------------------------
# probe


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


def _open_input(path: PathLike) -> av.container.InputContainer:
    """Open a media file for reading; a missing file raises FileNotFoundError unchanged."""
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, "no such file", os.fspath(path))
    try:
        return av.open(os.fspath(path), "r")
    except av.error.FFmpegError as exc:
        raise VideoError(f"cannot open as media: {exc}", "unreadable") from exc


def _video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    """The first real video stream (cover art in audio files does not count)."""
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    raise VideoError("no video stream", "no_video_stream")


def _audio_stream(container: av.container.InputContainer) -> av.audio.stream.AudioStream | None:
    return container.streams.audio[0] if container.streams.audio else None


def _display_size(width: int, height: int, sample_aspect: Fraction | None, rotation: int) -> tuple[int, int]:
    """Width x height as shown: non-square pixels stretched (width scaled by the sample
    aspect ratio), then turned by `rotation`."""
    if sample_aspect and sample_aspect > 0 and sample_aspect != 1:
        width = max(1, math.floor(width * sample_aspect + Fraction(1, 2)))
    return (height, width) if rotation in (90, 270) else (width, height)


def _clockwise(frame_rotation: int | float) -> int:
    """FFmpeg's display-matrix angle (counter-clockwise) -> clockwise quarter turns in degrees."""
    return int(round(-frame_rotation / 90.0)) % 4 * 90


def probe_video(path: PathLike) -> VideoInfo:
    """Read a video's timestamps, keyframes and stream parameters without decoding it.

    One demux pass over the video stream's packets; only the first frame is decoded, to
    read the display rotation that FFmpeg attaches to decoded frames.  Raises `VideoError`
    ``unreadable``, ``no_video_stream`` or ``empty``.  A file damaged part way through is
    probed up to the damage (compare `frame_count` with `declared_frames`).
    """
    with _open_input(path) as container:
        stream = _video_stream(container)
        has_audio = _audio_stream(container) is not None
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
                            rotation = _clockwise(frames[0].rotation)
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
        display = _display_size(width, height, stream.sample_aspect_ratio, rotation)
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


# --------------------------------------------------------------------------------------
# plan


@dataclass(frozen=True)
class ClipSpec:
    """One clip: `frame_count` frames from `start_frame` (nominal; the last may be shorter)."""

    index: int
    start_frame: int
    frame_count: int

    @property
    def end_frame(self) -> int:
        return self.start_frame + self.frame_count


@dataclass(frozen=True)
class ClipTask:
    """Consecutive clips one worker cuts in one decoding pass.

    Decoding starts at keyframe `seek_frame` (timestamp `seek_pts`), at or before the first
    clip.  Frame indexes count source frames, or, when `fps` is set, frames of the video
    resampled to `fps` (an FFmpeg ``fps`` filter whose frame 0 is the source frame with
    timestamp `start_pts`, which `plan_clip_tasks` fills in from the probe).  `keyframes`
    lists (index, pts) of the keyframes from `seek_frame` to the first one at or after the
    task's end: codec "copy" uses them to number keyframes (counting packets would miscount
    open GOPs, whose leading frames follow their keyframe in decode order).
    """

    clips: tuple[ClipSpec, ...]
    seek_frame: int
    seek_pts: int
    start_pts: int | None = None  # None: the video stream's start time
    fps: Fraction | None = None
    keyframes: tuple[tuple[int, int], ...] = ()

    @property
    def end_frame(self) -> int:
        return max(clip.end_frame for clip in self.clips)


def as_fraction(value: Fraction | float | int | str) -> Fraction:
    """An exact rate: 29.97 -> 2997/100 (not the binary float's 29.969999...)."""
    return Fraction(str(value)) if isinstance(value, float) else Fraction(value)


def _resampled_index(pts: int, start_pts: int, time_base: Fraction, fps: Fraction) -> int:
    """The output frame at which an FFmpeg fps filter (round to nearest) first shows `pts`."""
    return math.floor((pts - start_pts) * time_base * fps + Fraction(1, 2))


def resampled_frame_count(info: VideoInfo, fps: Fraction | float) -> int:
    """How many frames the video has once resampled to `fps` (at least 1)."""
    return max(1, math.floor(Fraction(info.duration) * as_fraction(fps) + Fraction(1, 2)))


def plan_clip_tasks(
    info: VideoInfo,
    frames: int = 64,
    stride: int | None = None,
    drop_last: bool = False,
    fps: Fraction | float | None = None,
    task_frames: int = 512,
) -> list[ClipTask]:
    """Cut the video's timeline into clips and group them into tasks.

    Clip k starts at frame k * `stride` (default: `frames`) for every start before the end;
    clips running past the end are shorter, and dropped with `drop_last`.  With `fps` the
    frame indexes are those of the video resampled to `fps`.  A task holds consecutive
    clips covering about `task_frames` frames; once a task is that long, the next one
    starts at the first clip that follows a keyframe (so it decodes little before its
    first clip), or anyway at twice that length.  Each task seeks to the last keyframe at
    or before its first clip.

    >>> [len(t.clips) for t in plan_clip_tasks(info, frames=64, task_frames=512)]  # doctest: +SKIP
    [8, 8, 3]
    """
    if frames <= 0 or (stride is not None and stride <= 0) or task_frames <= 0:
        raise ValueError("frames, stride and task_frames must be positive")
    stride = stride or frames
    if fps is None:
        rate = None
        total = info.frame_count
        key_index, key_pts = list(info.keyframes), list(info.keyframe_pts)
    else:
        rate = as_fraction(fps)
        if rate <= 0:
            raise ValueError("fps must be positive")
        total = resampled_frame_count(info, rate)
        key_index, key_pts = [], []
        for pts in info.keyframe_pts:
            index = _resampled_index(pts, info.start_pts, info.time_base, rate)
            if key_index and key_index[-1] == index:
                key_pts[-1] = pts  # the later keyframe shows the same output frame
            else:
                key_index.append(index)
                key_pts.append(pts)
    clips = [ClipSpec(k, start, min(frames, total - start)) for k, start in enumerate(range(0, total, stride))]
    if drop_last:
        clips = [clip for clip in clips if clip.frame_count == frames]

    def seek_for(frame: int) -> tuple[int, int]:
        at = bisect_right(key_index, frame) - 1
        return (key_index[at], key_pts[at]) if at >= 0 else (0, info.start_pts)

    tasks: list[ClipTask] = []
    group: list[ClipSpec] = []

    def close_group() -> None:
        seek_frame, seek_pts = seek_for(group[0].start_frame)
        first = bisect_left(key_index, seek_frame)
        last = bisect_left(key_index, max(clip.end_frame for clip in group)) + 1
        keyframes = tuple(zip(key_index[first:last], key_pts[first:last]))
        tasks.append(ClipTask(tuple(group), seek_frame, seek_pts, info.start_pts, rate, keyframes))

    for clip in clips:
        if group:
            covered = group[-1].end_frame - group[0].start_frame
            follows_keyframe = seek_for(clip.start_frame)[0] > group[-1].start_frame
            if covered >= task_frames and (follows_keyframe or covered >= 2 * task_frames):
                close_group()
                group = []
        group.append(clip)
    if group:
        close_group()
    return tasks


# --------------------------------------------------------------------------------------
# output size and encoder settings


def output_size(
    width: int,
    height: int,
    *,
    size: tuple[int, int] | None = None,
    short_side: int | None = None,
    max_side: int | None = None,
    upscale: bool = True,
) -> tuple[int, int, str | None]:
    """The output (width, height, note) for a video displayed at `width` x `height`.

    `size` gives the exact size; `short_side` scales so the shorter side has that length,
    keeping the aspect ratio; `max_side` then caps the longer side (alone: caps the source
    size).  Without `upscale` the result is never larger than the source.  The result is
    rounded down to even numbers (at least 2), as 4:2:0 encoders need; `note` says so when
    that changed the requested size, e.g. ``"565x320 rounded to 564x320 (yuv420p needs even
    sizes)"``, else it is None.  Raises ValueError for arguments that are not sizes and
    VideoError (class ``size_too_large``) for a result past `check_output_size`.
    """
    for name, value in (("width", width), ("height", height), ("short_side", short_side), ("max_side", max_side)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            raise ValueError(f"{name} must be a positive integer, not {value!r}")
    if size is not None:
        if short_side is not None:
            raise ValueError("give either size or short_side, not both")
        if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
            raise ValueError(f"size must be two positive integers (width, height), not {size!r}")
        w, h = size
    elif short_side is not None:
        scale = Fraction(short_side, min(width, height))
        w, h = (short_side, _round(height * scale)) if width <= height else (_round(width * scale), short_side)
    else:
        w, h = width, height
    if max_side is not None and max(w, h) > max_side:
        scale = Fraction(max_side, max(w, h))
        w, h = (max_side, _round(h * scale)) if w >= h else (_round(w * scale), max_side)
    if not upscale and (w > width or h > height):
        scale = min(Fraction(width, w), Fraction(height, h))
        w, h = _round(w * scale), _round(h * scale)
    even_w, even_h = max(2, w - w % 2), max(2, h - h % 2)
    check_output_size(even_w, even_h)
    note = None
    if (even_w, even_h) != (w, h):
        note = f"{w}x{h} rounded to {even_w}x{even_h} (yuv420p needs even sizes)"
    return even_w, even_h, note


# The largest output the encode path makes.  libx264 opens no encoder with a side over 16384
# pixels (SVT-AV1: a width over 16384 or a height over 8704; MPEG-4 part 2: a side over 8191),
# and FFmpeg allocates no frame, of any codec or pixel format, whose padded size
# (width + 128) * (height + 128) reaches 2**28 (av_image_check_size): 16384x16128 is the
# largest frame with a 16384 side.
MAX_SIDE = 16384
_MAX_SIDES = {"av1": (16384, 8704), "mpeg4": (8190, 8190)}  # (width, height), even
_MAX_PADDED_PIXELS = 2**28


def check_output_size(width: int, height: int, codec: str | None = None) -> None:
    """Raise VideoError (class ``size_too_large``) for an output of `width` x `height` that
    the encode path cannot make: a side over MAX_SIDE (or over `codec`'s own limit), or a
    frame larger than FFmpeg allocates."""
    max_w, max_h = _MAX_SIDES.get(codec or "", (MAX_SIDE, MAX_SIDE))
    if width > max_w or height > max_h:
        limit = (f"at most {max_w} pixels a side" if max_w == max_h
                 else f"at most {max_w} pixels wide and {max_h} high")
        which = f"the {codec} encoder takes" if codec in _MAX_SIDES else "datamill makes frames of"
        raise VideoError(f"{width}x{height} is too large: {which} {limit}", "size_too_large")
    if (width + 128) * (height + 128) >= _MAX_PADDED_PIXELS:
        raise VideoError(f"{width}x{height} is too large: FFmpeg makes no frame with "
                         f"(width + 128) * (height + 128) of {_MAX_PADDED_PIXELS} or more "
                         f"(e.g. {MAX_SIDE}x16128 is the largest with a side of {MAX_SIDE})",
                         "size_too_large")


def _round(value: Fraction) -> int:
    return max(1, math.floor(value + Fraction(1, 2)))


def encoder_settings(codec: str, crf: int | None = None, preset: str | int | None = None) -> tuple[str, dict[str, str]]:
    """The FFmpeg encoder name and its options for one of `CODECS` (not "copy").

    `crf` is the constant-quality level (x264/x265 0-51, VP9/SVT-AV1 0-63; for mpeg4 the
    fixed quantiser 1-31); `preset` is the encoder's speed preset (x264/x265 names such as
    "superfast", SVT-AV1 0-13, VP9 cpu-used 0-8; mpeg4 has none).  Raises ValueError.
    """
    if codec not in _ENCODERS:
        raise ValueError(f"unknown codec {codec!r}; choose from {', '.join(CODECS)}")
    encoder, default_crf, default_preset, (low, high) = _ENCODERS[codec]
    quality = default_crf if crf is None else crf
    if not isinstance(quality, int) or not low <= quality <= high:
        raise ValueError(f"crf for {codec} must be an integer in {low}..{high}, not {crf!r}")
    if preset is not None and default_preset is None:
        raise ValueError(f"{codec} has no presets")
    speed = str(preset if preset is not None else default_preset)
    if codec == "mpeg4":
        return encoder, {"flags": "+qscale", "global_quality": str(quality * _FF_QP2LAMBDA)}
    if codec == "vp9":
        return encoder, {"crf": str(quality), "b": "0", "deadline": "realtime", "cpu-used": speed, "row-mt": "1"}
    options = {"crf": str(quality), "preset": speed}
    if codec == "hevc":
        options["x265-params"] = "log-level=error"
    if codec == "av1":
        options["svtav1-params"] = "log-level=1"
    return encoder, options


# --------------------------------------------------------------------------------------
# cut


@dataclass(frozen=True)
class ClipResult:
    """What became of one clip.  `first_frame` and `frame_count` are the real ones (they
    differ from the nominal clip with codec "copy", or when the stream ends early);
    `start_time` and `duration` are in seconds from the start of the video.  `status` is
    "ok", "failed", or "filtered" (codec "copy" only: no keyframe in the clip's range).
    `message` says why a clip failed, or notes something about an ok one (its size was
    rounded to even, the stream ended before its nominal end)."""

    index: int
    path: str
    first_frame: int
    frame_count: int
    start_time: float
    duration: float
    width: int
    height: int
    codec: str
    bytes: int
    status: str
    error_class: str | None = None
    message: str | None = None


def _reraise_if_disk_full(exc: BaseException) -> None:
    if getattr(exc, "errno", None) == errno.ENOSPC:
        raise exc


class _AudioBuffer:
    """Recently decoded source audio, as float planar samples on the source's sample clock.

    Sample s is at time s / rate in the container's timeline (the clock of video pts).
    """

    def __init__(self, rate: int, layout: str):
        self.rate, self.layout = rate, layout
        self._resampler: av.AudioResampler | None = None
        self._chunks: deque[tuple[int, np.ndarray]] = deque()
        self.end: int | None = None  # one past the last buffered sample

    def add(self, frame: av.AudioFrame) -> None:
        if frame.format.name != "fltp" or frame.sample_rate != self.rate or frame.layout.name != self.layout:
            if self._resampler is None:
                self._resampler = av.AudioResampler(format="fltp", layout=self.layout, rate=self.rate)
            converted = self._resampler.resample(frame)
        else:
            converted = [frame]
        for part in converted:
            samples = part.to_ndarray()
            if part.pts is not None and part.time_base is not None:
                start = math.floor(part.pts * part.time_base * self.rate + Fraction(1, 2))
            else:
                start = self.end or 0
            self._chunks.append((start, samples))
            self.end = max(self.end or 0, start + samples.shape[1])

    def read(self, start: int, stop: int) -> np.ndarray:
        """Samples [start, stop), silence where nothing was decoded."""
        out = np.zeros((len(av.AudioLayout(self.layout).channels), max(0, stop - start)), dtype=np.float32)
        for chunk_start, samples in self._chunks:
            lo, hi = max(start, chunk_start), min(stop, chunk_start + samples.shape[1])
            if lo < hi:
                out[:, lo - start : hi - start] = samples[:, lo - chunk_start : hi - chunk_start]
        return out

    def prune(self, before: int) -> None:
        while self._chunks and self._chunks[0][0] + self._chunks[0][1].shape[1] <= before:
            self._chunks.popleft()


class _AudioTrack:
    """The audio track of an output file (AAC; Opus in webm/ogg), fed float planar samples
    at the source's rate and layout, in order."""

    def __init__(self, out: av.container.OutputContainer, rate: int, layout: str):
        opus = out.format.name in ("webm", "ogg")
        self.stream = out.add_stream("libopus" if opus else "aac", rate=48000 if opus else rate, layout=layout)
        context = self.stream.codec_context
        self._resampler = av.AudioResampler(
            format=context.format.name, layout=layout, rate=context.sample_rate, frame_size=960 if opus else 1024
        )
        self._out, self._rate, self._layout = out, rate, layout
        self._written = 0  # source samples in
        self._pts = 0  # encoded samples out

    def write(self, samples: np.ndarray) -> None:
        if not samples.shape[1]:
            return
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format="fltp", layout=self._layout)
        frame.sample_rate, frame.pts, frame.time_base = self._rate, self._written, Fraction(1, self._rate)
        self._written += samples.shape[1]
        self._encode(self._resampler.resample(frame))

    def close(self) -> None:
        self._encode(self._resampler.resample(None))
        self._out.mux(self.stream.encode(None))

    def _encode(self, frames: list[av.AudioFrame]) -> None:
        for frame in frames:
            frame.pts, frame.time_base = self._pts, Fraction(1, frame.sample_rate)
            self._pts += frame.samples
            self._out.mux(self.stream.encode(frame))


class _ClipWriter:
    """One clip's output, written under a temporary name and renamed when finished.

    The pass calls `record` and `write` for each frame; once the clip's video is complete
    its audio (if any) is completed through `audio` up to `audio_end`; then `finish` (or
    `abort`, which leaves nothing behind) returns the clip's result.
    """

    def __init__(self, spec: ClipSpec, path: PathLike, width: int, height: int, codec: str):
        self.spec, self.path = spec, Path(path)
        self.width, self.height, self.codec = width, height, codec
        self.frames = 0
        self.first_frame = spec.start_frame
        self.start_time = 0.0
        self.end_time = 0.0
        self.audio: _AudioTrack | None = None
        self.audio_next = 0  # next source audio sample to write
        self.audio_limit = 0  # source audio sample the clip's video has reached so far
        self.audio_end: int | None = None  # set once the video is complete
        self.note: str | None = None

    def record(self, first_frame: int, time: float, duration: float) -> None:
        """Account for one more frame, shown from `time` for `duration` seconds."""
        if self.frames == 0:
            self.first_frame, self.start_time = first_frame, time
        self.frames += 1
        self.end_time = max(self.end_time, time + duration)

    def write(self, frame: av.VideoFrame, pts: int) -> None:
        raise NotImplementedError

    def finish(self) -> ClipResult:
        raise NotImplementedError

    def abort(self, error_class: str, message: str) -> ClipResult:
        raise NotImplementedError

    def result(self, status: str = "ok", error_class: str | None = None, message: str | None = None) -> ClipResult:
        ok = status == "ok"
        return ClipResult(
            index=self.spec.index,
            path=str(self.path),
            first_frame=self.first_frame,
            frame_count=self.frames if ok else 0,
            start_time=self.start_time,
            duration=max(0.0, self.end_time - self.start_time) if ok else 0.0,
            width=self.width,
            height=self.height,
            codec=self.codec,
            bytes=_size_of(self.path) if ok else 0,
            status=status,
            error_class=error_class,
            message=message if message is not None else (self.note if ok else None),
        )


def _size_of(path: Path) -> int:
    if path.is_dir():
        return sum(entry.stat().st_size for entry in os.scandir(path))
    return path.stat().st_size if path.exists() else 0


class _ContainerWriter(_ClipWriter):
    """Base for writers that produce one media file (encoded or remuxed)."""

    def __init__(self, spec: ClipSpec, path: PathLike, width: int, height: int, codec: str):
        super().__init__(spec, path, width, height, codec)
        self._stack = contextlib.ExitStack()
        tmp = self._stack.enter_context(atomic_path(self.path))
        options = {"movflags": "+faststart"} if self.path.suffix.lower() in (".mp4", ".mov", ".m4v") else {}
        try:
            self.out = av.open(str(tmp), "w", options=options)
        except BaseException as exc:
            self._stack.__exit__(type(exc), exc, exc.__traceback__)
            raise

    def add_audio_track(self, rate: int, layout: str, first_sample: int) -> None:
        self.audio = _AudioTrack(self.out, rate, layout)
        self.audio_next = self.audio_limit = first_sample

    def _flush(self) -> None:
        """Drain the video encoder into the file (encoding writers)."""

    def finish(self) -> ClipResult:
        try:
            self._flush()
            if self.audio is not None:
                self.audio.close()
            self.out.close()
        except (av.error.FFmpegError, OSError) as exc:
            _reraise_if_disk_full(exc)
            return self.abort("encode_error", f"cannot finish {self.path.name}: {exc}")
        self._stack.close()  # renames the temporary file into place
        return self.result()

    def abort(self, error_class: str, message: str) -> ClipResult:
        with contextlib.suppress(Exception):
            self.out.close()
        error = VideoError(message, error_class)
        self._stack.__exit__(VideoError, error, None)  # removes the temporary file
        return self.result("failed", error_class, message)


class _EncodeWriter(_ContainerWriter):
    """Encodes frames (already at output size, yuv420p) into a new video file."""

    def __init__(
        self,
        spec: ClipSpec,
        path: PathLike,
        size: tuple[int, int],
        codec: str,
        settings: tuple[str, dict[str, str]],
        rate: Fraction,
        time_base: Fraction,
        threads: int,
    ):
        super().__init__(spec, path, size[0], size[1], codec)
        encoder, options = settings
        try:
            self.stream = self.out.add_stream(encoder, rate=rate, options=dict(options))
            self.stream.width, self.stream.height, self.stream.pix_fmt = size[0], size[1], "yuv420p"
            self.stream.codec_context.time_base = time_base
            self.stream.codec_context.thread_count = threads
            if codec == "hevc" and self.path.suffix.lower() in (".mp4", ".mov"):
                self.stream.codec_tag = "hvc1"  # what Apple players expect
        except BaseException as exc:
            self.abort("encode_error", f"cannot set up {encoder}: {exc}")
            raise
        self._time_base = time_base
        self._first_pts: int | None = None
        self._last_pts = -1

    def write(self, frame: av.VideoFrame, pts: int) -> None:
        """Encode `frame` at `pts` (in the writer's time base; made relative to the first)."""
        if self._first_pts is None:
            self._first_pts = pts
        pts = max(pts - self._first_pts, self._last_pts + 1)
        self._last_pts = pts
        # A decoded frame keeps its picture type; the encoder must choose its own.
        frame.pts, frame.time_base, frame.pict_type = pts, self._time_base, 0
        self.out.mux(self.stream.encode(frame))

    def _flush(self) -> None:
        self.out.mux(self.stream.encode(None))


class _CopyWriter(_ContainerWriter):
    """Remuxes the source's video packets unchanged, timestamps shifted to start at 0."""

    def __init__(self, spec: ClipSpec, path: PathLike, source: av.video.stream.VideoStream):
        context = source.codec_context
        super().__init__(spec, path, context.width, context.height, "copy")
        try:
            self.stream = self.out.add_stream_from_template(source)
        except BaseException as exc:
            self.abort("encode_error", f"cannot remux {context.name}: {exc}")
            raise
        self._offset: int | None = None

    def write_packet(self, packet: av.Packet) -> None:
        if self._offset is None:
            self._offset = packet.pts if packet.pts is not None else packet.dts
        copy = av.Packet(bytes(packet))  # overlapping clips may need the same packet twice
        copy.pts = None if packet.pts is None else packet.pts - self._offset
        copy.dts = None if packet.dts is None else packet.dts - self._offset
        copy.duration, copy.time_base, copy.is_keyframe = packet.duration, packet.time_base, packet.is_keyframe
        copy.stream = self.stream
        self.out.mux(copy)


class _FramesWriter(_ClipWriter):
    """Writes a folder of JPEG frames ``frame_000000.jpg``..., renamed into place when done."""

    def __init__(self, spec: ClipSpec, path: PathLike, size: tuple[int, int], quality: int):
        super().__init__(spec, path, size[0], size[1], "jpeg")
        self._tmp = temp_path_for(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp.mkdir()
        self._quality = quality

    def write(self, frame: av.VideoFrame, pts: int) -> None:
        frame.to_image().save(self._tmp / f"frame_{self.frames - 1:06d}.jpg", quality=self._quality)

    def finish(self) -> ClipResult:
        if self.path.is_dir():
            shutil.rmtree(self.path)
        rename_noreplace(self._tmp, self.path)
        return self.result()

    def abort(self, error_class: str, message: str) -> ClipResult:
        shutil.rmtree(self._tmp, ignore_errors=True)
        return self.result("failed", error_class, message)


class _NpyWriter(_ClipWriter):
    """Collects RGB frames at output size and saves them as one uint8 T x H x W x 3 .npy."""

    def __init__(self, spec: ClipSpec, path: PathLike, size: tuple[int, int]):
        super().__init__(spec, path, size[0], size[1], "npy")
        self._frames: list[np.ndarray] = []

    def write(self, frame: av.VideoFrame, pts: int) -> None:
        self._frames.append(frame.to_ndarray(format="rgb24"))

    def finish(self) -> ClipResult:
        with atomic_path(self.path) as tmp:
            np.save(tmp, np.stack(self._frames))
        self._frames = []
        return self.result()

    def abort(self, error_class: str, message: str) -> ClipResult:
        self._frames = []
        return self.result("failed", error_class, message)


class _FrameTransform:
    """Scale (swscale; area filter when shrinking) and turn a decoded frame upright.

    Scaling goes straight to the output pixel format at the pre-rotation size; a rotation
    is then a lossless transpose/flip in an FFmpeg filter graph at the output size (about
    as cheap as the scaling itself; only rotated videos pay).
    """

    _FILTERS = {90: [("transpose", "clock")], 270: [("transpose", "cclock")], 180: [("hflip", None), ("vflip", None)]}

    def __init__(self, size: tuple[int, int], rotation: int, pix_fmt: str, interpolation: str | None, threads: int):
        self.size, self.rotation = size, rotation
        self._scaled = (size[1], size[0]) if rotation in (90, 270) else size
        self._pix_fmt, self._interpolation, self._threads = pix_fmt, interpolation, threads
        self._scaler = VideoReformatter()  # keeps its SwsContext between frames
        self._graph: av.filter.Graph | None = None
        self._count = 0

    def __call__(self, frame: av.VideoFrame) -> av.VideoFrame:
        width, height = self._scaled
        interpolation = self._interpolation or ("AREA" if width * height < frame.width * frame.height else "BICUBIC")
        scaled = self._scaler.reformat(
            frame, width, height, format=self._pix_fmt, interpolation=interpolation, threads=self._threads
        )
        if not self.rotation:
            return scaled
        if self._graph is None:
            graph = av.filter.Graph()
            nodes = [graph.add_buffer(width=width, height=height, format=self._pix_fmt, time_base=Fraction(1, 1000))]
            nodes += [graph.add(name, args) for name, args in self._FILTERS[self.rotation]]
            nodes.append(graph.add("buffersink"))
            graph.link_nodes(*nodes).configure()
            self._graph = graph
        scaled.pts, scaled.time_base = self._count, Fraction(1, 1000)
        self._count += 1
        self._graph.push(scaled)
        return self._graph.pull()


class _Timeline:
    """Turns decoded frames (presentation order, from the seek keyframe) into output frames.

    Without fps, output frame i is source frame i.  With fps, it behaves like FFmpeg's fps
    filter: output frame j shows the latest source frame whose time, rounded to output
    frames, is <= j; so frames are dropped or repeated.
    """

    def __init__(self, task: ClipTask, time_base: Fraction):
        self.task, self.time_base = task, time_base
        self.next_index = task.seek_frame
        self._held: tuple[av.VideoFrame, int, int] | None = None  # (frame, index, pts)

    def push(self, frame: av.VideoFrame, pts: int, stop: int) -> list[tuple[int, av.VideoFrame, int]]:
        """(output index, frame, source pts) of the output frames before `stop` this frame decides."""
        if self.task.fps is None:
            index = self.next_index
            self.next_index += 1
            return [(index, frame, pts)] if index < stop else []
        index = _resampled_index(pts, self.task.start_pts, self.time_base, self.task.fps)
        out = self._emit_held(min(index, stop))
        self._held = (frame, index, pts)
        return out

    def flush(self, stop: int) -> list[tuple[int, av.VideoFrame, int]]:
        """At a clean end of stream the last frame lasts until `stop` (fps mode)."""
        return self._emit_held(stop) if self.task.fps is not None else []

    def _emit_held(self, until: int) -> list[tuple[int, av.VideoFrame, int]]:
        if self._held is None:
            return []
        frame, index, pts = self._held
        out = [(j, frame, pts) for j in range(max(index, self.next_index), until)]
        self.next_index = max(self.next_index, until)
        return out


class _SeekMissed(Exception):
    """Seeking landed after the wanted keyframe (imprecise seeking, e.g. in MPEG-TS)."""


# Seek this many seconds before the task's keyframe when seeking to it lands after it (formats
# without an index seek by bisecting timestamps); None: read from the start of the file.
_SEEK_BACK_S = (0.0, 3.0, 20.0, None)


@dataclass(frozen=True)
class _OutputPlan:
    """How every clip of a task is written."""

    fmt: str
    codec: str
    settings: tuple[str, dict[str, str]] | None  # encoder and options, for fmt "mp4"
    size: tuple[int, int] | None
    rotation: int | None
    interpolation: str | None
    jpeg_quality: int
    threads: int
    audio: bool


def cut_clips(
    path: PathLike,
    task: ClipTask,
    *,
    out_paths: Callable[[ClipSpec], PathLike],
    size: tuple[int, int] | None = None,
    codec: str = "h264",
    crf: int | None = None,
    preset: str | int | None = None,
    fmt: str = "mp4",
    audio: str = "drop",
    fps: Fraction | float | None = None,
    rotation: int | None = None,
    interpolation: str | None = None,
    jpeg_quality: int = 90,
    threads: int = 0,
) -> list[ClipResult]:
    """Cut the clips of one task out of `path` in one pass; one result per clip, in order.

    `out_paths(clip)` names each output: a file for "mp4" and "npy" (uint8 T x H x W x 3,
    RGB), a folder of ``frame_000000.jpg``... for "frames".  `size` is the output
    (width, height) as displayed, even for "mp4" (see `output_size`); None keeps the
    display size (see `VideoInfo`), rounded down to even (the result's `message` says so).
    Outputs have square pixels.  `rotation` (clockwise degrees) defaults to the file's
    display matrix; 0 keeps the coded orientation.  `fps` resamples like FFmpeg's fps
    filter; it must be the rate the task was planned with (default: the task's `fps`).

    `codec` is one of `CODECS` (see `encoder_settings` for `crf` and `preset`).  "copy"
    remuxes packets without decoding: each clip then starts at the first keyframe at or
    after its nominal start and runs to the first keyframe at or after its nominal end (the
    next clip's start, with stride = frames) or the end of the video; results give the real
    first frame and frame count; a clip with no keyframe in its range has status "filtered"
    and error class ``no_keyframe`` (its frames are in the clip before it).
    `audio="keep"` (mp4 only) puts the source audio of each clip's time span into it (AAC;
    Opus in webm).  `threads` goes to the decoder, the scaler and the encoders (0: FFmpeg
    decides; give 1 when every core already runs a worker).

    A decode error part way fails the clips it touches and those after it; clips finished
    before it are kept.  Raises `VideoError` only when nothing could be done (the file
    cannot be opened, has no video stream, or nothing in the range decodes), and
    ValueError for invalid options.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if audio not in AUDIO_MODES:
        raise ValueError(f"audio must be 'drop' or 'keep', not {audio!r}")
    if audio == "keep" and fmt != "mp4":
        raise ValueError("audio='keep' needs fmt='mp4'")
    if rotation is not None and rotation not in (0, 90, 180, 270):
        raise ValueError(f"rotation must be 0, 90, 180 or 270, not {rotation!r}")
    if size is not None and (len(size) != 2 or min(size) <= 0):
        raise ValueError(f"size must be two positive integers, not {size!r}")
    if not task.clips:
        return []
    if fps is not None:
        if task.fps is not None and as_fraction(fps) != task.fps:
            raise ValueError(f"fps {fps} differs from the task's {task.fps}")
        task = dataclasses.replace(task, fps=as_fraction(fps))
    if codec == "copy":
        if fmt != "mp4" or size is not None or crf is not None or preset is not None or task.fps is not None:
            raise ValueError("codec 'copy' cannot resize, resample, re-encode or write frames/npy")
        settings = None
    else:
        settings = encoder_settings(codec, crf, preset) if fmt == "mp4" else None
    if fmt == "mp4" and size is not None and (size[0] % 2 or size[1] % 2):
        raise ValueError(f"mp4 sizes must be even (yuv420p), not {size[0]}x{size[1]}; see output_size()")
    plan = _OutputPlan(fmt, codec, settings, size, rotation, interpolation, jpeg_quality, threads, audio == "keep")
    kind = _CopyPass if codec == "copy" else _DecodePass
    for seek_back in _SEEK_BACK_S:
        try:
            return kind(path, task, out_paths, plan, seek_back).run()
        except _SeekMissed:
            continue
    raise AssertionError("reading from the start cannot miss the seek point")


class _Pass:
    """One pass over a task's range of a file: the bookkeeping shared by decode and copy.

    Subclasses read the video (`_read`) and open writers; this class owns the clip
    writers' life cycle and the clips' audio, which is decoded, buffered for a short
    window and re-encoded into each clip that overlaps it.
    """

    def __init__(
        self,
        path: PathLike,
        task: ClipTask,
        out_paths: Callable[[ClipSpec], PathLike],
        plan: _OutputPlan,
        seek_back: float | None,
    ):
        self.path, self.task, self.out_paths, self.plan = path, task, out_paths, plan
        self.seek_back = seek_back  # seconds before the keyframe to seek to; None: no seek
        self._at_seek_keyframe = False
        self.pending: deque[ClipSpec] = deque(sorted(task.clips, key=lambda clip: clip.start_frame))
        self.active: list[_ClipWriter] = []  # receiving video
        self.closing: list[_ClipWriter] = []  # video complete, waiting for the rest of their audio
        self.results: dict[int, ClipResult] = {}
        self.audio_buffer: _AudioBuffer | None = None
        self.audio_stream: av.audio.stream.AudioStream | None = None
        self.video_sample = 0  # source audio sample the video has reached
        self.demux_time = 0.0

    def run(self) -> list[ClipResult]:
        container = _open_input(self.path)
        try:
            with container:
                self.stream = _video_stream(container)
                self.time_base = Fraction(self.stream.time_base)
                if self.task.start_pts is None:
                    self.task = dataclasses.replace(self.task, start_pts=self.stream.start_time or 0)
                self.origin = float(self.task.start_pts * self.time_base)  # seconds of frame 0
                self.rate = Fraction(self.stream.average_rate or self.stream.guessed_rate or 25)
                streams: list[av.stream.Stream] = [self.stream]
                audio_stream = _audio_stream(container) if self.plan.audio else None
                if audio_stream is not None and audio_stream.codec_context.sample_rate:
                    self.audio_stream = audio_stream
                    streams.append(audio_stream)
                    context = audio_stream.codec_context
                    self.audio_buffer = _AudioBuffer(context.sample_rate, context.layout.name)
                seek_time = float((self.task.seek_pts - self.task.start_pts) * self.time_base)
                self.video_sample = self._sample(seek_time)  # no clip needs audio before this
                seeked = self.seek_back is not None and self.task.seek_frame > 0
                if seeked:
                    assert self.seek_back is not None
                    target = self.task.seek_pts - math.ceil(self.seek_back / self.time_base)
                    try:
                        container.seek(target, stream=self.stream, backward=True, any_frame=False)
                    except av.error.FFmpegError as exc:
                        raise VideoError(f"cannot seek to frame {self.task.seek_frame}: {exc}", "decode_error") from exc
                self._at_seek_keyframe = not seeked
                self._read(container, streams, seeked)
        finally:
            for writer in self.active + self.closing:  # only left on an exception
                self.results[writer.spec.index] = writer.abort("decode_error", "interrupted")
        return [self.results[clip.index] for clip in self.task.clips]

    def _read(self, container: av.container.InputContainer, streams: list[av.stream.Stream], seeked: bool) -> None:
        raise NotImplementedError

    def _check_seek(self, packet: av.Packet) -> None:
        """Raise _SeekMissed if, after seeking, video comes from past the task's keyframe.

        Every packet before a keyframe in decode order is shown before it, so a packet
        later than the keyframe seen before the keyframe itself means we started too late.
        """
        if self._at_seek_keyframe:
            return
        ts = packet.pts if packet.pts is not None else packet.dts
        if ts is None or packet.size == 0:
            return
        if packet.is_keyframe and ts == self.task.seek_pts:
            self._at_seek_keyframe = True
        elif ts > self.task.seek_pts:
            raise _SeekMissed()

    def _sample(self, time: float) -> int:
        """The source audio sample at `time` seconds from the start of the video."""
        return round((self.origin + time) * self.audio_buffer.rate) if self.audio_buffer else 0

    def _video_done(self) -> bool:
        """True once no clip needs more video; False while video is still wanted."""
        return not self.pending and not self.active

    def _wanted(self, packet: av.Packet) -> bool:
        """Whether to keep reading after the video is done (only to finish clips' audio)."""
        if packet.pts is not None:
            self.demux_time = float(packet.pts * self.time_base)
        for writer in list(self.closing):  # audio that should have come long ago: give up, pad
            if writer.audio_end is not None and self.demux_time - writer.audio_end / self.audio_buffer.rate > _AUDIO_SLACK_S:  # type: ignore[union-attr]
                self._feed_audio(writer, at_end=True)
        return bool(self.closing)

    def _failed(self, clip: ClipSpec, error_class: str, message: str, status: str = "failed") -> None:
        self.results[clip.index] = ClipResult(
            index=clip.index,
            path=str(self.out_paths(clip)),
            first_frame=clip.start_frame,
            frame_count=0,
            start_time=0.0,
            duration=0.0,
            width=0,
            height=0,
            codec=self.plan.codec,
            bytes=0,
            status=status,
            error_class=error_class,
            message=message,
        )

    def _video_finished(self, writer: _ClipWriter) -> None:
        self.active.remove(writer)
        if writer.audio is None:
            self.results[writer.spec.index] = writer.finish()
            return
        writer.audio_end = self._sample(writer.end_time)
        self.closing.append(writer)
        self._feed_audio(writer)

    def _drop(self, writer: _ClipWriter, error_class: str, message: str) -> None:
        for group in (self.active, self.closing):
            if writer in group:
                group.remove(writer)
        self.results[writer.spec.index] = writer.abort(error_class, message)

    def _on_audio(self, packet: av.Packet) -> None:
        assert self.audio_buffer is not None and self.audio_stream is not None
        try:
            frames = self.audio_stream.decode(packet)
        except av.error.FFmpegError:
            return  # a damaged audio packet leaves a short silence, not a failed clip
        for frame in frames:
            self.audio_buffer.add(frame)
        for writer in self.active + self.closing:
            self._feed_audio(writer)
        keep_from = [w.audio_next for w in self.active + self.closing]
        self.audio_buffer.prune(min(keep_from + [self.video_sample]) if self.pending else min(keep_from, default=0))

    def _feed_audio(self, writer: _ClipWriter, at_end: bool = False) -> None:
        """Write the clip's audio as far as both the decoded audio and the clip's video go;
        `at_end`: no more audio will come, pad with silence to the clip's end."""
        if writer.audio is None or self.audio_buffer is None:
            return
        limit = writer.audio_end if writer.audio_end is not None else writer.audio_limit
        if not at_end:
            limit = min(limit, self.audio_buffer.end if self.audio_buffer.end is not None else writer.audio_next)
        if limit > writer.audio_next:
            try:
                writer.audio.write(self.audio_buffer.read(writer.audio_next, limit))
            except (av.error.FFmpegError, OSError) as exc:
                _reraise_if_disk_full(exc)
                self._drop(writer, "encode_error", f"cannot encode audio: {exc}")
                return
            writer.audio_next = limit
        if writer in self.closing and writer.audio_end is not None and writer.audio_next >= writer.audio_end:
            self.closing.remove(writer)
            self.results[writer.spec.index] = writer.finish()

    def _end(self, error: str | None, unreached_class: str, unreached: str, unreached_status: str = "failed") -> None:
        """Settle every clip: on `error` the clips still receiving video fail; otherwise (a
        clean end of the stream) they are finished as they are.  Clips never started get
        `unreached_status`, `unreached_class` and the message `unreached` (formatted with
        their start)."""
        for writer in list(self.active):
            if error is not None:
                self._drop(writer, "decode_error", error)
            else:
                self._video_finished(writer)
        for writer in list(self.closing):  # video complete: keep them, with what audio came
            self._feed_audio(writer, at_end=True)
        for clip in self.pending:
            self._failed(clip, unreached_class, unreached.format(clip.start_frame), unreached_status)
        self.pending.clear()


class _DecodePass(_Pass):
    """Decode, resample (fps), transform and encode every frame the task's clips need."""

    transform: _FrameTransform | None = None
    note: str | None = None
    _last_source: av.VideoFrame | None = None
    _last_output: av.VideoFrame | None = None

    def _read(self, container: av.container.InputContainer, streams: list[av.stream.Stream], seeked: bool) -> None:
        self.stream.codec_context.thread_type = "AUTO"
        self.stream.codec_context.thread_count = self.plan.threads
        timeline = _Timeline(self.task, self.time_base)
        stop = self.task.end_frame
        started = False
        error: str | None = None
        damaged: str | None = None
        try:
            for packet in container.demux(*streams):
                if packet.stream is not self.stream:
                    self._on_audio(packet)
                    continue
                if self._video_done():
                    if not self._wanted(packet):
                        break
                    continue
                self._check_seek(packet)
                if packet.is_corrupt:  # e.g. the last, cut-off packet of a truncated file
                    damaged = f"damaged packet at {float((packet.pts or 0) * self.time_base):.3f} s"
                for frame in self.stream.decode(packet):
                    pts = frame.pts if frame.pts is not None else frame.dts
                    if pts is None:
                        pts = self.task.seek_pts
                    elif pts < self.task.seek_pts:
                        continue  # before our keyframe (the seek landed earlier, or leading frames)
                    if seeked and not started and pts != self.task.seek_pts:
                        raise _SeekMissed()
                    started = True
                    for index, source, source_pts in timeline.push(frame, pts, stop):
                        self._on_frame(index, source, source_pts)
            else:
                for index, source, source_pts in timeline.flush(stop):
                    self._on_frame(index, source, source_pts)
        except av.error.FFmpegError as exc:
            _reraise_if_disk_full(exc)
            if not started:
                raise VideoError(f"cannot decode from frame {self.task.seek_frame}: {exc}", "decode_error") from exc
            error = f"decode error after frame {timeline.next_index - 1}: {exc}"
        for writer in self.active:
            writer.note = f"the stream ended after {writer.frames} of {writer.spec.frame_count} frames"
        if error is None and damaged is not None and self.active:
            error = f"{damaged}; the stream ended at frame {timeline.next_index - 1}"
        if error is None:
            self._end(None, "decode_error", "the stream ended before frame {}")
        else:
            self._end(error, "decode_error", error + " (clip starts at frame {})")

    def _on_frame(self, index: int, frame: av.VideoFrame, pts: int) -> None:
        if self.task.fps is None:
            time = float((pts - self.task.start_pts) * self.time_base)
            duration = float(frame.duration * self.time_base) if frame.duration else float(1 / self.rate)
        else:
            time, duration = float(index / self.task.fps), float(1 / self.task.fps)
        self.video_sample = self._sample(time)
        while self.pending and self.pending[0].start_frame <= index:
            clip = self.pending.popleft()
            if clip.start_frame < index:
                self._failed(clip, "decode_error", f"frame {clip.start_frame} was not decoded")
            else:
                self._open(clip, frame, time)
        if not self.active:
            return
        if frame is not self._last_source:  # fps resampling repeats frames: transform once
            self._last_source, self._last_output = frame, self._transform(frame)
        output = self._last_output
        assert output is not None
        encode_pts = index if self.task.fps is not None or self.plan.codec == "mpeg4" else pts
        for writer in list(self.active):
            writer.record(index, time, duration)
            writer.audio_limit = self._sample(time)
            try:
                writer.write(output, encode_pts)
            except (av.error.FFmpegError, OSError) as exc:
                _reraise_if_disk_full(exc)
                self._drop(writer, "encode_error", f"cannot encode frame {index}: {exc}")
                continue
            if writer.frames == writer.spec.frame_count:
                self._video_finished(writer)

    def _transform(self, frame: av.VideoFrame) -> av.VideoFrame:
        if self.transform is None:
            rotation = _clockwise(frame.rotation) if self.plan.rotation is None else self.plan.rotation
            upright = _display_size(frame.width, frame.height, self.stream.sample_aspect_ratio, rotation)
            if self.plan.size is not None:
                size = self.plan.size
            else:
                width, height, self.note = output_size(*upright)
                size = (width, height)
            pix_fmt = "yuv420p" if self.plan.fmt == "mp4" else "rgb24"
            self.transform = _FrameTransform(size, rotation, pix_fmt, self.plan.interpolation, self.plan.threads)
        return self.transform(frame)

    def _open(self, clip: ClipSpec, frame: av.VideoFrame, time: float) -> None:
        plan, path = self.plan, self.out_paths(clip)
        try:
            if self.transform is None:
                self._transform(frame)  # settles the output size
            assert self.transform is not None
            size = self.transform.size
            if plan.fmt == "frames":
                writer: _ClipWriter = _FramesWriter(clip, path, size, plan.jpeg_quality)
            elif plan.fmt == "npy":
                writer = _NpyWriter(clip, path, size)
            else:
                assert plan.settings is not None
                if self.task.fps is not None:
                    rate, time_base = self.task.fps, 1 / self.task.fps
                elif plan.codec == "mpeg4":  # MPEG-4 part 2 wants a small time base: constant rate
                    rate = self.rate.limit_denominator(65535)
                    time_base = 1 / rate
                else:  # the source's timestamps, so variable frame rates survive
                    rate, time_base = self.rate, self.time_base
                writer = _EncodeWriter(clip, path, size, plan.codec, plan.settings, rate, time_base, plan.threads)
                if self.audio_buffer is not None:
                    writer.add_audio_track(self.audio_buffer.rate, self.audio_buffer.layout, self._sample(time))
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            _reraise_if_disk_full(exc)
            self._failed(clip, "encode_error", f"cannot start the clip: {exc}")
            return
        writer.note = self.note
        self.active.append(writer)


class _CopyPass(_Pass):
    """Remux whole GOPs: clips start on keyframes, no video decoding."""

    def _read(self, container: av.container.InputContainer, streams: list[av.stream.Stream], seeked: bool) -> None:
        # Keyframes are numbered from the plan; failing that (a hand-made task), by counting
        # packets, which is right for closed GOPs.
        keyframe_index = {pts: index for index, pts in self.task.keyframes}
        count: int | None = None if seeked else 0  # index of the next packet, by counting
        max_end = 0  # pts + duration of the furthest packet so far
        error: str | None = None
        try:
            for packet in container.demux(*streams):
                if packet.stream is not self.stream:
                    self._on_audio(packet)
                    continue
                if packet.size == 0 or packet.is_discard:
                    continue
                if self._video_done():
                    if not self._wanted(packet):
                        break
                    continue
                self._check_seek(packet)
                if not self._at_seek_keyframe:
                    continue
                ts = packet.pts if packet.pts is not None else packet.dts
                if count is None:
                    count = self.task.seek_frame
                if ts is None:
                    ts = max_end
                if packet.is_keyframe:
                    count = keyframe_index.get(ts, count)
                index = count
                count += 1
                time = float((ts - self.task.start_pts) * self.time_base)
                if packet.is_keyframe:
                    for writer in list(self.active):
                        if writer.spec.end_frame <= index:
                            self._video_finished(writer)
                    while self.pending and self.pending[0].start_frame <= index:
                        clip = self.pending.popleft()
                        if clip.end_frame <= index:
                            self._failed(clip, "no_keyframe", f"no keyframe in frames {clip.start_frame}..{clip.end_frame - 1}", "filtered")
                        else:
                            self._open(clip, time)
                duration = packet.duration or round(1 / (self.rate * self.time_base))
                max_end = max(max_end, ts + duration)
                self.video_sample = self._sample(time)
                for writer in list(self.active):
                    if time < writer.start_time:  # a leading frame of an open GOP: needs the GOP before
                        continue
                    writer.record(index, time, float(duration * self.time_base))
                    writer.audio_limit = max(writer.audio_limit, self._sample(time))
                    if packet.is_corrupt:
                        self._drop(writer, "decode_error", f"damaged packet at frame {index}")
                        continue
                    try:
                        writer.write_packet(packet)  # type: ignore[attr-defined]
                    except (av.error.FFmpegError, OSError) as exc:
                        _reraise_if_disk_full(exc)
                        self._drop(writer, "encode_error", f"cannot remux frame {index}: {exc}")
        except av.error.FFmpegError as exc:
            _reraise_if_disk_full(exc)
            if count is None or count == self.task.seek_frame:
                raise VideoError(f"cannot read from frame {self.task.seek_frame}: {exc}", "decode_error") from exc
            error = f"read error after frame {count - 1}: {exc}"
        if error is None:
            self._end(None, "no_keyframe", "no keyframe at or after frame {} before the end", "filtered")
        else:
            self._end(error, "decode_error", error + " (clip starts at frame {})")

    def _open(self, clip: ClipSpec, time: float) -> None:
        try:
            writer = _CopyWriter(clip, self.out_paths(clip), self.stream)
            if self.audio_buffer is not None:
                writer.add_audio_track(self.audio_buffer.rate, self.audio_buffer.layout, self._sample(time))
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            _reraise_if_disk_full(exc)
            self._failed(clip, "encode_error", f"cannot start the clip: {exc}")
            return
        self.active.append(writer)
