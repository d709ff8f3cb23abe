"""The two passes that cut a task's clips: decode (and re-encode) or copy (remux packets)."""
from __future__ import annotations

import dataclasses
import math
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Generic, Iterator

import av
import av.error

from .audio import AudioBuffer
from .encode import ClipResult, ClipWriter, CopyWriter, EncodeWriter, FramesWriter, NpyWriter, Unit
from .errors import VideoError, reraise_if_disk_full
from .frames import FrameTransform, Timeline
from .plan import ClipSpec, ClipTask, output_size
from .probe import PathLike, clockwise, display_size, find_audio_stream, find_video_stream, open_input

# How far (seconds) demuxed video may run ahead of a clip's end before we stop waiting for
# that clip's audio (a file whose audio track ends early, or is badly interleaved).
_AUDIO_SLACK_S = 5.0


class SeekMissed(Exception):
    """Seeking landed after the wanted keyframe (imprecise seeking, e.g. in MPEG-TS)."""


@dataclass(frozen=True)
class OutputPlan:
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


class _Pass(Generic[Unit]):
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
        plan: OutputPlan,
        seek_back: float | None,
    ):
        self.path, self.task, self.out_paths, self.plan = path, task, out_paths, plan
        self.seek_back = seek_back  # seconds before the keyframe to seek to; None: no seek
        self._at_seek_keyframe = False
        self.pending: deque[ClipSpec] = deque(sorted(task.clips, key=lambda clip: clip.start_frame))
        self.active: list[ClipWriter[Unit]] = []  # receiving video
        self.closing: list[ClipWriter[Unit]] = []  # video complete, waiting for the rest of their audio
        self.results: dict[int, ClipResult] = {}
        self.audio_buffer: AudioBuffer | None = None
        self.audio_stream: av.audio.stream.AudioStream | None = None
        self.video_sample = 0  # source audio sample the video has reached
        self.demux_time = 0.0

    def run(self) -> list[ClipResult]:
        container = open_input(self.path)
        try:
            with container:
                self.stream = find_video_stream(container)
                self.time_base = Fraction(self.stream.time_base)
                if self.task.start_pts is None:
                    self.task = dataclasses.replace(self.task, start_pts=self.stream.start_time or 0)
                self.origin = float(self.task.start_pts * self.time_base)  # seconds of frame 0
                self.rate = Fraction(self.stream.average_rate or self.stream.guessed_rate or 25)
                streams: list[av.stream.Stream] = [self.stream]
                audio_stream = find_audio_stream(container) if self.plan.audio else None
                if audio_stream is not None and audio_stream.codec_context.sample_rate:
                    self.audio_stream = audio_stream
                    streams.append(audio_stream)
                    context = audio_stream.codec_context
                    self.audio_buffer = AudioBuffer(context.sample_rate, context.layout.name)
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

    def _video_packets(
        self, container: av.container.InputContainer, streams: list[av.stream.Stream], skip_empty: bool
    ) -> Iterator[av.Packet]:
        """The video packets the clips still need, read from where `run` seeked to.

        Audio packets go to the clips' audio on the way.  `skip_empty` skips empty and
        discarded video packets (a decoder needs the empty one that ends the stream, to
        flush).  Once no clip needs more video, reading goes on only while clips wait for
        their audio.  Raises SeekMissed (see `_check_seek`).
        """
        for packet in container.demux(*streams):
            if packet.stream is not self.stream:
                self._on_audio(packet)
                continue
            if skip_empty and (packet.size == 0 or packet.is_discard):
                continue
            if self._video_done():
                if not self._wanted(packet):
                    return
                continue
            self._check_seek(packet)
            yield packet

    def _check_seek(self, packet: av.Packet) -> None:
        """Raise SeekMissed if, after seeking, video comes from past the task's keyframe.

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
            raise SeekMissed()

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

    def _start(self, clip: ClipSpec, time: float, open_writer: Callable[[], ClipWriter[Unit]]) -> None:
        """Open `clip`'s writer, which starts at `time`, with an audio track when the pass
        keeps audio, and make it active; a writer that cannot start fails the clip."""
        try:
            writer = open_writer()
            if self.audio_buffer is not None:
                writer.add_audio_track(self.audio_buffer.rate, self.audio_buffer.layout, self._sample(time))
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            reraise_if_disk_full(exc)
            self._failed(clip, "encode_error", f"cannot start the clip: {exc}")
            return
        self.active.append(writer)

    def _video_finished(self, writer: ClipWriter[Unit]) -> None:
        self.active.remove(writer)
        if writer.audio is None:
            self.results[writer.spec.index] = writer.finish()
            return
        writer.audio_end = self._sample(writer.end_time)
        self.closing.append(writer)
        self._feed_audio(writer)

    def _drop(self, writer: ClipWriter[Unit], error_class: str, message: str) -> None:
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

    def _feed_audio(self, writer: ClipWriter[Unit], at_end: bool = False) -> None:
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
                reraise_if_disk_full(exc)
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


class DecodePass(_Pass[av.VideoFrame]):
    """Decode, resample (fps), transform and encode every frame the task's clips need."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.transform: FrameTransform | None = None  # made at the first frame (it settles the size)
        self.note: str | None = None  # output_size's note on that size
        self._last_source: av.VideoFrame | None = None  # the last frame transformed, and its output
        self._last_output: av.VideoFrame | None = None

    def _read(self, container: av.container.InputContainer, streams: list[av.stream.Stream], seeked: bool) -> None:
        self.stream.codec_context.thread_type = "AUTO"
        self.stream.codec_context.thread_count = self.plan.threads
        timeline = Timeline(self.task, self.time_base)
        stop = self.task.end_frame
        started = False
        error: str | None = None
        damaged: str | None = None
        try:
            for packet in self._video_packets(container, streams, skip_empty=False):
                if packet.is_corrupt:  # e.g. the last, cut-off packet of a truncated file
                    damaged = f"damaged packet at {float((packet.pts or 0) * self.time_base):.3f} s"
                for frame in self.stream.decode(packet):
                    pts = frame.pts if frame.pts is not None else frame.dts
                    if pts is None:
                        pts = self.task.seek_pts
                    elif pts < self.task.seek_pts:
                        continue  # before our keyframe (the seek landed earlier, or leading frames)
                    if seeked and not started and pts != self.task.seek_pts:
                        raise SeekMissed()
                    started = True
                    for index, source, source_pts in timeline.push(frame, pts, stop):
                        self._on_frame(index, source, source_pts)
            # The stream ended (or no clip needs more video, and then this does nothing).
            for index, source, source_pts in timeline.flush(stop):
                self._on_frame(index, source, source_pts)
        except av.error.FFmpegError as exc:
            reraise_if_disk_full(exc)
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
                reraise_if_disk_full(exc)
                self._drop(writer, "encode_error", f"cannot encode frame {index}: {exc}")
                continue
            if writer.frames == writer.spec.frame_count:
                self._video_finished(writer)

    def _transform(self, frame: av.VideoFrame) -> av.VideoFrame:
        if self.transform is None:
            rotation = clockwise(frame.rotation) if self.plan.rotation is None else self.plan.rotation
            upright = display_size(frame.width, frame.height, self.stream.sample_aspect_ratio, rotation)
            if self.plan.size is not None:
                size = self.plan.size
            else:
                width, height, self.note = output_size(*upright)
                size = (width, height)
            pix_fmt = "yuv420p" if self.plan.fmt == "mp4" else "rgb24"
            self.transform = FrameTransform(size, rotation, pix_fmt, self.plan.interpolation, self.plan.threads)
        return self.transform(frame)

    def _open(self, clip: ClipSpec, frame: av.VideoFrame, time: float) -> None:
        path = self.out_paths(clip)
        self._start(clip, time, lambda: self._writer(clip, path, frame))

    def _writer(self, clip: ClipSpec, path: PathLike, frame: av.VideoFrame) -> ClipWriter[av.VideoFrame]:
        plan = self.plan
        if self.transform is None:
            self._transform(frame)  # settles the output size
        assert self.transform is not None
        size = self.transform.size
        if plan.fmt == "frames":
            writer: ClipWriter[av.VideoFrame] = FramesWriter(clip, path, size, plan.jpeg_quality)
        elif plan.fmt == "npy":
            writer = NpyWriter(clip, path, size)
        else:
            assert plan.settings is not None
            if self.task.fps is not None:
                rate, time_base = self.task.fps, 1 / self.task.fps
            elif plan.codec == "mpeg4":  # MPEG-4 part 2 wants a small time base: constant rate
                rate = self.rate.limit_denominator(65535)
                time_base = 1 / rate
            else:  # the source's timestamps, so variable frame rates survive
                rate, time_base = self.rate, self.time_base
            writer = EncodeWriter(clip, path, size, plan.codec, plan.settings, rate, time_base, plan.threads)
        writer.note = self.note
        return writer


class CopyPass(_Pass[av.Packet]):
    """Remux whole GOPs: clips start on keyframes, no video decoding."""

    def _read(self, container: av.container.InputContainer, streams: list[av.stream.Stream], seeked: bool) -> None:
        # Keyframes are numbered from the plan; failing that (a hand-made task), by counting
        # packets, which is right for closed GOPs.
        keyframe_index = {pts: index for index, pts in self.task.keyframes}
        count: int | None = None if seeked else 0  # index of the next packet, by counting
        max_end = 0  # pts + duration of the furthest packet so far
        error: str | None = None
        try:
            for packet in self._video_packets(container, streams, skip_empty=True):
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
                        writer.write(packet, ts)
                    except (av.error.FFmpegError, OSError) as exc:
                        reraise_if_disk_full(exc)
                        self._drop(writer, "encode_error", f"cannot remux frame {index}: {exc}")
        except av.error.FFmpegError as exc:
            reraise_if_disk_full(exc)
            if count is None or count == self.task.seek_frame:
                raise VideoError(f"cannot read from frame {self.task.seek_frame}: {exc}", "decode_error") from exc
            error = f"read error after frame {count - 1}: {exc}"
        if error is None:
            self._end(None, "no_keyframe", "no keyframe at or after frame {} before the end", "filtered")
        else:
            self._end(error, "decode_error", error + " (clip starts at frame {})")

    def _open(self, clip: ClipSpec, time: float) -> None:
        self._start(clip, time, lambda: CopyWriter(clip, self.out_paths(clip), self.stream))
