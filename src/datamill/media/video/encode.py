"""Encoder settings, and the clip writers (encoded video with its audio, remuxed packets,
JPEG frames, .npy arrays) behind one interface."""
from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Generic, TypeVar

import av
import av.error
import numpy as np

from ...atomic import atomic_path, rename_noreplace, temp_path_for
from .audio import AudioTrack
from .errors import VideoError, reraise_if_disk_full
from .plan import ClipSpec
from .probe import PathLike

# What a writer is given for each frame of its clip: a decoded frame, or a source packet.
Unit = TypeVar("Unit", av.VideoFrame, av.Packet)

CODECS = ("h264", "hevc", "vp9", "av1", "mpeg4", "copy")


# Default encoder settings per codec: (FFmpeg encoder, default crf, default preset, crf range).
# h264 defaults to x264 "ultrafast" at crf 23: the only preset that keeps the whole cut
# (decode + area scale + encode) at >= 70% of decode-only speed, with a PSNR above OpenCV's
# mp4v writer; preset="superfast" makes smaller files at a higher encoding cost.  The
# measurements: BENCHMARKS.md, Clips, "Encoder presets".
_ENCODERS: dict[str, tuple[str, int, str | None, tuple[int, int]]] = {
    "h264": ("libx264", 23, "ultrafast", (0, 51)),
    "hevc": ("libx265", 28, "ultrafast", (0, 51)),
    "vp9": ("libvpx-vp9", 32, "8", (0, 63)),
    "av1": ("libsvtav1", 35, "10", (0, 63)),
    "mpeg4": ("mpeg4", 4, None, (1, 31)),  # "crf" is mpeg4's fixed quantiser (qscale)
}
_FF_QP2LAMBDA = 118


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


class ClipWriter(Generic[Unit]):
    """One clip's output, written under a temporary name and renamed when finished.

    The pass calls `record` and `write` for each frame (a decoded frame, or for the copy
    writer a source packet: the writer's `Unit`); once the clip's video is complete
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
        self.audio: AudioTrack | None = None
        self.audio_next = 0  # next source audio sample to write
        self.audio_limit = 0  # source audio sample the clip's video has reached so far
        self.audio_end: int | None = None  # set once the video is complete
        self.note: str | None = None

    def add_audio_track(self, rate: int, layout: str, first_sample: int) -> None:
        """Give the clip an audio track, fed source samples from `first_sample` on (at the
        source's `rate` and `layout`); only writers of media files have one."""
        raise ValueError(f"{type(self).__name__} writes no audio")

    def record(self, first_frame: int, time: float, duration: float) -> None:
        """Account for one more frame, shown from `time` for `duration` seconds."""
        if self.frames == 0:
            self.first_frame, self.start_time = first_frame, time
        self.frames += 1
        self.end_time = max(self.end_time, time + duration)

    def write(self, unit: Unit, pts: int) -> None:
        """Write the clip's next frame; `pts` is its timestamp in the writer's time base
        (writers that keep no timestamps, or the packet's own, ignore it)."""
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


class _ContainerWriter(ClipWriter[Unit]):
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
        self.audio = AudioTrack(self.out, rate, layout)
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
            reraise_if_disk_full(exc)
            return self.abort("encode_error", f"cannot finish {self.path.name}: {exc}")
        self._stack.close()  # renames the temporary file into place
        return self.result()

    def abort(self, error_class: str, message: str) -> ClipResult:
        with contextlib.suppress(Exception):
            self.out.close()
        error = VideoError(message, error_class)
        self._stack.__exit__(VideoError, error, None)  # removes the temporary file
        return self.result("failed", error_class, message)


class EncodeWriter(_ContainerWriter[av.VideoFrame]):
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


class CopyWriter(_ContainerWriter[av.Packet]):
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

    def write(self, packet: av.Packet, pts: int) -> None:
        """Remux `packet` with its own timestamps, shifted by the clip's first (`pts` unused)."""
        if self._offset is None:
            self._offset = packet.pts if packet.pts is not None else packet.dts
        copy = av.Packet(bytes(packet))  # overlapping clips may need the same packet twice
        copy.pts = None if packet.pts is None else packet.pts - self._offset
        copy.dts = None if packet.dts is None else packet.dts - self._offset
        copy.duration, copy.time_base, copy.is_keyframe = packet.duration, packet.time_base, packet.is_keyframe
        copy.stream = self.stream
        self.out.mux(copy)


class FramesWriter(ClipWriter[av.VideoFrame]):
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


class NpyWriter(ClipWriter[av.VideoFrame]):
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
