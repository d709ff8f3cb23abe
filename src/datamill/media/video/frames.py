"""Decoded frames to output frames: the fps timeline, and scaling and rotating upright."""
from __future__ import annotations

from fractions import Fraction

import av
from av.video.reformatter import VideoReformatter

from .plan import ClipTask, resampled_index


class FrameTransform:
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


class Timeline:
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
        index = resampled_index(pts, self.task.start_pts, self.time_base, self.task.fps)
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
