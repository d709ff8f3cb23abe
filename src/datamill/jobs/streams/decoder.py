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

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class Spec:
    """What a decoder process needs."""

    source: str
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
        else:
            frames[k] = rgb
            mask[k] = True
            pts[k] = t
        if k == self.layout.frames - 1:  # its last target: the window goes out now
            self.slot.commit({"window": self.window, "stats": self.counters.as_dict()})
            self.slot = None
        return True

    def _next_window(self) -> bool:
        if self.slot is not None:  # (a window whose last target was given went out then)
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
            self.slot.commit({"window": self.window, "stats": self.counters.as_dict()})
            self.slot = None
        end = self.ring.reserve()
        if end is not None:
            end.commit({"window": self.window + 1, "end": True, "error": error,
                        "stats": self.counters.as_dict()})


class Resampler:
    """Assigns a source's frames to the stream's targets (nearest frame; see the module),
    frame by frame, so that a live source reopened after a failure goes on where it was."""

    def __init__(self, spec: Spec, writer: WindowWriter):
        self.fps, self.tol, self.writer = spec.fps, spec.tolerance, writer
        self.c = writer.counters
        self.prev: tuple[float, np.ndarray] | None = None
        self.prev_used = True
        self.nxt = 0  # the next target to fill

    def feed(self, t: float, rgb: np.ndarray) -> bool:
        """One decoded frame at `t` seconds; False when the ring is closed."""
        c, prev = self.c, self.prev
        c.decoded += 1
        used = False
        j_new = math.floor(t * self.fps + 1e-9)  # targets up to this frame's time are decided:
        while self.nxt <= j_new:                  # the frame before it or this one is nearest
            tj = self.nxt / self.fps
            d_prev = tj - prev[0] if prev is not None else math.inf
            d_new = abs(t - tj)
            if d_new <= d_prev and d_new <= self.tol:
                choice, ct = rgb, t
                c.duplicated += used
                used = True
            elif d_prev <= self.tol:
                choice, ct = prev[1], prev[0]
                c.duplicated += self.prev_used
                self.prev_used = True
            else:
                choice, ct = None, math.nan
            if not self.writer.put(self.nxt, choice, ct):
                return False
            self.nxt += 1
        if prev is not None and not self.prev_used:
            c.dropped += 1
        self.prev, self.prev_used = (t, rgb), used
        return True

    def finish(self) -> None:
        """The source ended: the targets of its last window after its last frame."""
        prev, w = self.prev, self.writer
        if prev is None:
            return
        while self.nxt % w.layout.frames and w.slot is not None:
            if self.nxt / self.fps - prev[0] > self.tol:
                break
            self.c.duplicated += self.prev_used
            self.prev_used = True
            w.put(self.nxt, prev[1], prev[0])
            self.nxt += 1
        if not self.prev_used:
            self.c.dropped += 1
        self.prev_used = True


RECONNECT_BACKOFF = (0.5, 10.0)  # a live source is reopened after 0.5 s, doubling up to 10 s


def run_decoder(spec: Spec, ring: Ring) -> None:
    """The decoder process: its source's windows into `ring`, then an end (with the error
    that ended it, if any).  A live source that ends or fails is reopened with backoff
    (its windows go on from the time it is back).  Dies with the stream's owner."""
    import time
    from ...media.video.stream import is_live
    die_with_owner(ring)
    counters = Counters()
    writer = WindowWriter(ring, spec.layout, counters)
    resampler = Resampler(spec, writer)
    live = is_live(spec.source)
    size = (spec.layout.width, spec.layout.height)
    delay = RECONNECT_BACKOFF[0]
    error = None
    while True:
        base = 0.0 if resampler.prev is None else time.monotonic() - spec.t0
        try:
            for t, rgb in source_frames(spec.source, size, spec.align,
                                        spec.realtime and not live,  # live: real time already
                                        spec.t0, spec.options):
                if not resampler.feed(t + base if spec.align == "pts" else t, rgb):
                    os._exit(0)  # the stream was closed
                delay = RECONNECT_BACKOFF[0]
            error = None
        except Exception as exc:  # noqa: BLE001 - the source fails, the stream goes on
            error = f"{type(exc).__name__}: {exc}"
        if not live or ring.closed:
            break
        time.sleep(delay)
        delay = min(2 * delay, RECONNECT_BACKOFF[1])
    try:
        resampler.finish()
        writer.finish(error)
    finally:
        os._exit(0)
