"""The clips' audio: decoded source audio buffered on its sample clock, and an output track."""
from __future__ import annotations

import math
from collections import deque
from fractions import Fraction

import av
import numpy as np


class AudioBuffer:
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


class AudioTrack:
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
