"""Cut the clips of one task: check the options, then run a decode or copy pass."""
from __future__ import annotations

import dataclasses
from fractions import Fraction
from typing import Callable

from .encode import ClipResult, encoder_settings
from .passes import CopyPass, DecodePass, OutputPlan, SeekMissed
from .plan import ClipSpec, ClipTask, as_fraction
from .probe import PathLike

FORMATS = ("mp4", "frames", "npy")
AUDIO_MODES = ("drop", "keep")


# Seek this many seconds before the task's keyframe when seeking to it lands after it (formats
# without an index seek by bisecting timestamps); None: read from the start of the file.
_SEEK_BACK_S = (0.0, 3.0, 20.0, None)


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
    plan = OutputPlan(fmt, codec, settings, size, rotation, interpolation, jpeg_quality, threads, audio == "keep")
    kind = CopyPass if codec == "copy" else DecodePass
    for seek_back in _SEEK_BACK_S:
        try:
            return kind(path, task, out_paths, plan, seek_back).run()
        except SeekMissed:
            continue
    raise AssertionError("reading from the start cannot miss the seek point")
