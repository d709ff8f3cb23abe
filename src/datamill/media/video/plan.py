"""Plan clips and tasks over a probed video, and size the output."""
from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from fractions import Fraction

from .errors import VideoError
from .probe import VideoInfo


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


# A long video is cut into about this many tasks per worker: the last ones to finish then
# leave the other workers idle for a short tail only.
LONG_TASKS = 4
# A task closes at the first clip after a keyframe once it covers its target; with no keyframe
# by SPLIT_GOP x the target it closes anyway, and the next task starts within the GOP: it
# decodes from the keyframe before and throws the frames before its first clip away.
SPLIT_GOP = 2


def as_fraction(value: Fraction | float | int | str) -> Fraction:
    """An exact rate: 29.97 -> 2997/100 (not the binary float's 29.969999...)."""
    return Fraction(str(value)) if isinstance(value, float) else Fraction(value)


def resampled_index(pts: int, start_pts: int, time_base: Fraction, fps: Fraction) -> int:
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
    workers: int | None = None,
) -> list[ClipTask]:
    """Cut the video's timeline into clips and group them into tasks.

    Clip k starts at frame k * `stride` (default: `frames`) for every start before the end;
    clips running past the end are shorter, and dropped with `drop_last`.  With `fps` the
    frame indexes are those of the video resampled to `fps`.  A task holds consecutive
    clips covering about `task_frames` frames; once a task is that long, the next one
    starts at the first clip that follows a keyframe (so it decodes little before its
    first clip), or anyway at SPLIT_GOP times that length.  Each task seeks to the last keyframe at
    or before its first clip.

    With `workers` (the job's worker count), a video longer than `task_frames` is cut finer,
    so that one long video keeps every worker busy: tasks of about frames / (LONG_TASKS x
    workers) (at least one clip, at most `task_frames`), by the same rule: a video whose
    GOPs are longer than SPLIT_GOP x that gets tasks that start within a GOP.  A video of at
    most `task_frames` frames stays one task, as without `workers`.

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
            index = resampled_index(pts, info.start_pts, info.time_base, rate)
            if key_index and key_index[-1] == index:
                key_pts[-1] = pts  # the later keyframe shows the same output frame
            else:
                key_index.append(index)
                key_pts.append(pts)
    clips = [ClipSpec(k, start, min(frames, total - start)) for k, start in enumerate(range(0, total, stride))]
    if drop_last:
        clips = [clip for clip in clips if clip.frame_count == frames]

    target = task_frames  # a long video is cut into tasks of about `target` frames
    if workers is not None and clips and clips[-1].end_frame - clips[0].start_frame > task_frames:
        target = min(task_frames, max(stride, frames, -(-total // (LONG_TASKS * max(1, workers)))))

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
            if covered >= target and (follows_keyframe or covered >= SPLIT_GOP * target):
                close_group()
                group = []
        group.append(clip)
    if group:
        close_group()
    return tasks


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
