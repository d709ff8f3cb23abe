"""A source's decoder process: decode, resize, resample to the stream's rate and write each
window of frames straight into a slot of the source's ring.

A slot holds one window of one source: `frames` (F, H, W, 3) uint8, then `mask` (F,) bool
(False where no frame of the source was near that instant) and `pts` (F,) float64 (the
time of the frame used, NaN where missing).  Its meta says which window it is and the
source's counters so far; the last slot of a source has `end` set (and `error` when the
source failed).

Resampling is by timestamp, nearest frame: target j of the stream (time j / fps) gets the
source frame nearest to it, if one lies within `tolerance` seconds; a frame used for several
targets is counted `duplicated`, a frame used for none `dropped`, a target with no frame near
it is missing (its mask is False).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...engine.shm import Ring, die_with_owner
from ...media.video.stream import frames as source_frames


@dataclass
class Layout:
    """Where a window's arrays are in a slot."""

    frames: int  # per window (fps * window)
    width: int
    height: int

    @property
    def frame_bytes(self) -> int:
        return self.height * self.width * 3

    @property
    def slot_bytes(self) -> int:
        return self.frames * (self.frame_bytes + 1 + 8) + 16

    def arrays(self, buf: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(frames, mask, pts) views over a slot's bytes `buf` (uint8, 1-D)."""
        n, fb = self.frames, self.frame_bytes
        frames = buf[:n * fb].reshape(n, self.height, self.width, 3)
        mask = buf[n * fb:n * fb + n].view(np.bool_)
        start = n * fb + n + (-(n * fb + n)) % 8
        pts = buf[start:start + 8 * n].view(np.float64)
        return frames, mask, pts


@dataclass
class Counters:
    decoded: int = 0
    dropped: int = 0
    duplicated: int = 0
    missing: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class Spec:
    """What a decoder process needs."""

    source: str
    index: int
    fps: float
    layout: Layout
    align: str
    realtime: bool
    t0: float
    tolerance: float
    options: dict = field(default_factory=dict)


class WindowWriter:
    """Fills the ring's slots window by window, in order, from resampled targets."""

    def __init__(self, ring: Ring, layout: Layout, counters: Counters):
        self.ring, self.layout, self.counters = ring, layout, counters
        self.window = -1
        self.slot: Any = None
        self.arrays: tuple | None = None
        self.last_k = -1  # the last target of the window in progress that was given

    def put(self, j: int, rgb: np.ndarray | None, t: float) -> bool:
        """Target j gets `rgb` (None: missing); False when the ring is closed."""
        w, k = divmod(j, self.layout.frames)
        while w > self.window:
            if not self._next_window():
                return False
        frames, mask, pts = self.arrays
        self.last_k = k
        if rgb is None:
            mask[k] = False
            pts[k] = math.nan
            self.counters.missing += 1
        else:
            frames[k] = rgb
            mask[k] = True
            pts[k] = t
        return True

    def _next_window(self) -> bool:
        if self.slot is not None:
            self.slot.commit({"window": self.window, "stats": self.counters.as_dict()})
        self.slot = self.ring.reserve()
        if self.slot is None:
            return False
        self.window += 1
        self.last_k = -1
        self.arrays = self.layout.arrays(self.slot.view(np.uint8))
        self.arrays[1][:] = False
        self.arrays[2][:] = math.nan
        return True

    def finish(self, error: str | None = None) -> None:
        """Commit the window in progress (what it lacks is missing) and the end."""
        if self.slot is not None:
            self.counters.missing += self.layout.frames - 1 - self.last_k
            self.slot.commit({"window": self.window, "stats": self.counters.as_dict()})
            self.slot = None
        end = self.ring.reserve()
        if end is not None:
            end.commit({"window": self.window + 1, "end": True, "error": error,
                        "stats": self.counters.as_dict()})


def resample(spec: Spec, frames, writer: WindowWriter) -> None:
    """Assign the source's frames to the stream's targets (nearest frame; see the module)."""
    fps, tol, c = spec.fps, spec.tolerance, writer.counters
    prev: tuple[float, np.ndarray] | None = None
    prev_used = True
    nxt = 0  # the next target to fill
    for t, rgb in frames:
        c.decoded += 1
        used = False
        j_new = math.floor(t * fps + 1e-9)  # targets up to this frame's time are decided:
        while nxt <= j_new:                    # the frame before it or this one is nearest
            tj = nxt / fps
            d_prev = tj - prev[0] if prev is not None else math.inf
            d_new = abs(t - tj)
            if d_new <= d_prev and d_new <= tol:
                choice, ct = rgb, t
                c.duplicated += used
                used = True
            elif d_prev <= tol:
                choice, ct = prev[1], prev[0]
                c.duplicated += prev_used
                prev_used = True
            else:
                choice, ct = None, math.nan
            if not writer.put(nxt, choice, ct):
                return
            nxt += 1
        if prev is not None and not prev_used:
            c.dropped += 1
        prev, prev_used = (t, rgb), used
    if prev is not None:  # the targets of the last window after the last frame
        while nxt % writer.layout.frames and writer.slot is not None:
            tj = nxt / fps
            if tj - prev[0] > tol:
                break
            c.duplicated += prev_used
            prev_used = True
            writer.put(nxt, prev[1], prev[0])
            nxt += 1
        if not prev_used:
            c.dropped += 1


def run_decoder(spec: Spec, ring: Ring) -> None:
    """The decoder process: its source's windows into `ring`, then an end (with the error
    that ended it, if any).  Dies with the stream's owner."""
    die_with_owner(ring)
    counters = Counters()
    writer = WindowWriter(ring, spec.layout, counters)
    error = None
    try:
        resample(spec, source_frames(spec.source, (spec.layout.width, spec.layout.height),
                                     spec.align, spec.realtime, spec.t0, spec.options), writer)
    except Exception as exc:  # noqa: BLE001 - the source fails, the stream goes on
        error = f"{type(exc).__name__}: {exc}"
    try:
        writer.finish(error)
    finally:
        os._exit(0)
