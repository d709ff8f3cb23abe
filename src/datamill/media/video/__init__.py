"""Video: probe a file, plan clip tasks over it, cut clips (decode, resize, encode) with PyAV.

The `clips` job uses these in three steps:

1. `probe_video` reads packet timestamps and keyframe flags only (a demux pass, no frame
   decoding beyond the first one), so the driver learns the frame count and where the
   keyframes are in presentation order, quickly, even for an hour-long file.
2. `plan_clip_tasks` cuts the timeline into clips and groups consecutive clips into tasks of
   a few hundred frames (about frames / (4 x workers) for a long video), each starting at a
   keyframe, so that different workers can decode different ranges of one long video at the
   same time.
3. `cut_clips` runs one task: seek to its keyframe, decode, resize each frame as it comes
   (swscale, in C), rotate it upright if the file says so, and stream it straight into one
   encoder per clip.  Memory does not grow with the video or the clip length (except for
   ``fmt="npy"``, whose array is the output).

`output_size` turns the user's size options into an exact, even output size.

All functions are pure: no processes, no global state.  Failures raise `VideoError` with a
stable `error_class`, or come back as failed `ClipResult`s when only some clips are hit.

Modules, in the order they build on each other:

    errors.py   VideoError and its error classes
    probe.py    probe_video, VideoInfo; opening a file and finding its streams
    plan.py     ClipSpec, ClipTask, plan_clip_tasks; output_size, check_output_size
    audio.py    decoded source audio, buffered; a clip's output audio track
    frames.py   decoded frames to output frames (fps timeline, scale, rotate)
    encode.py   encoder_settings, ClipResult, and the clip writers behind one interface
    passes.py   the decode pass and the copy pass over a task
    cut.py      cut_clips: checks the options and runs a pass

This module's names are the public ones; the rest is internal to the package.
"""
from .cut import AUDIO_MODES, FORMATS, cut_clips
from .encode import CODECS, ClipResult, encoder_settings
from .errors import ERROR_CLASSES, VideoError
from .plan import (MAX_SIDE, ClipSpec, ClipTask, as_fraction, check_output_size, output_size, plan_clip_tasks,
                   resampled_frame_count)
from .probe import VideoInfo, probe_video

__all__ = [
    "AUDIO_MODES",
    "CODECS",
    "ERROR_CLASSES",
    "FORMATS",
    "MAX_SIDE",
    "ClipResult",
    "ClipSpec",
    "ClipTask",
    "VideoError",
    "VideoInfo",
    "as_fraction",
    "check_output_size",
    "cut_clips",
    "encoder_settings",
    "output_size",
    "plan_clip_tasks",
    "probe_video",
    "resampled_frame_count",
]
