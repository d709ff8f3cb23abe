"""The consumer side of `datamill.streams`: time windows of every source, as batches in
shared memory.

Each source has a decoder process (decoder.py) and a ring of window slots.  For window w
the stream takes each source's slot for w, waiting at most `stall_timeout` seconds for a
source that is late (it is then marked stalled for that window, and its frames are
missing), copies the sources' frames into one slot of the batch ring, fills what is missing
by the `on_missing` rule, and hands out that slot as read-only views.  A source's window
that comes after the stream has moved past it is dropped and counted `late`.
"""
from __future__ import annotations

import math
import multiprocessing as mp
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ...engine.shm import ReadSlot, Ring, RingError
from ...errors import UsageError
from .decoder import Layout, Spec, run_decoder

ON_MISSING = ("repeat", "black", "drop")
ALIGN = ("pts", "arrival")
UNTIL = ("all", "first")


@dataclass
class SourceState:
    source: str
    ring: Ring
    process: Any
    pending: ReadSlot | None = None  # a slot for a later window than the current one
    ended: bool = False
    error: str | None = None
    last: np.ndarray | None = None  # the last real frame (on_missing="repeat")
    stats: dict = field(default_factory=lambda: {
        "decoded": 0, "dropped": 0, "duplicated": 0, "missing": 0, "late": 0, "stalled": 0,
        "windows_dropped": 0, "failed": None})


class Batch:
    """One window of every source: `frames` (sources, F, H, W, 3) uint8, `mask` and `pts`
    (sources, F), `window` (its index), `start` (seconds), `stats` (per source: decoded,
    dropped, duplicated, missing, late, stalled, windows_dropped, failed).  The arrays are
    read-only views into shared memory, valid until the loop moves on or `release()`;
    `copy()` gives arrays that outlive it."""

    def __init__(self, slot: ReadSlot, layout: Layout, n: int, window: int, start: float,
                 stats: list[dict]):
        self._slot, self._layout, self._n = slot, layout, n
        self.window, self.start, self.stats = window, start, stats

    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        buf = self._slot.view(np.uint8)  # raises once released, naming copy()
        return _batch_arrays(buf, self._layout, self._n)

    @property
    def frames(self) -> np.ndarray:
        return self._arrays()[0]

    @property
    def mask(self) -> np.ndarray:
        return self._arrays()[1]

    @property
    def pts(self) -> np.ndarray:
        return self._arrays()[2]

    def copy(self) -> dict[str, Any]:
        frames, mask, pts = self._arrays()
        return {"frames": frames.copy(), "mask": mask.copy(), "pts": pts.copy(),
                "window": self.window, "start": self.start, "stats": self.stats}

    def release(self) -> None:
        self._slot.release()


def _batch_arrays(buf: np.ndarray, layout: Layout, n: int) -> tuple[np.ndarray, ...]:
    """(frames, mask, pts) of a batch slot holding `n` sources."""
    f, fb = layout.frames, layout.frame_bytes
    frames = buf[:n * f * fb].reshape(n, f, layout.height, layout.width, 3)
    at = n * f * fb
    mask = buf[at:at + n * f].view(np.bool_).reshape(n, f)
    at += n * f + (-(at + n * f)) % 8
    pts = buf[at:at + 8 * n * f].view(np.float64).reshape(n, f)
    return frames, mask, pts


class Stream:
    """`with datamill.streams(...) as stream: for batch in stream: ...` (see streams())."""

    def __init__(self, sources: Sequence[str], *, window: float, fps: float,
                 size: tuple[int, int], align: str, on_missing: str, stall_timeout: float,
                 realtime: bool, until: str, ring_windows: int, tolerance: float):
        self.sources = [str(s) for s in sources]
        self.window, self.fps = window, fps
        self.layout = Layout(int(round(fps * window)), size[0], size[1])
        self.on_missing, self.stall_timeout, self.until = on_missing, stall_timeout, until
        self.realtime, self.align = realtime, align
        self.ring_windows, self.tolerance = ring_windows, tolerance
        self.states: list[SourceState] = []
        self.paced = realtime
        self.t0 = 0.0  # when the decoders started (time.monotonic())
        self.batches: Ring | None = None
        self.current: Batch | None = None
        self.next_window = 0

    # -- life --------------------------------------------------------------------------------
    def __enter__(self) -> "Stream":
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _start(self) -> None:
        n = len(self.sources)
        lay = self.layout
        batch_bytes = n * lay.frames * (lay.frame_bytes + 1 + 8) + 16
        self.batches = Ring.create(batch_bytes, 2, name="streams-batch",
                                   size_option="size, window or fps")
        ctx = mp.get_context("fork")
        from ...media.video.stream import is_live
        self.paced = self.realtime or self.align == "arrival" or any(map(is_live, self.sources))
        t0 = self.t0 = time.monotonic()
        for i, source in enumerate(self.sources):
            ring = Ring.create(lay.slot_bytes, self.ring_windows, name=f"streams-src{i}",
                               drop_oldest=self.realtime, size_option="ring_windows")
            spec = Spec(source, self.fps, lay, self.align, self.realtime, t0, self.tolerance)
            proc = ctx.Process(target=run_decoder, args=(spec, ring), daemon=True,
                               name=f"datamill-decode-{i}")
            proc.start()
            self.states.append(SourceState(source, ring, proc))

    def close(self) -> None:
        """Stop the decoders and remove every segment (also after an error or Ctrl-C)."""
        if self.current is not None:
            self.current.release()
            self.current = None
        for st in self.states:
            st.ring.close()
        for st in self.states:
            if st.process.is_alive():
                st.process.kill()
            st.process.join(timeout=5)
        if self.batches is not None:
            self.batches.close()

    # -- iteration ---------------------------------------------------------------------------
    def __iter__(self) -> "Stream":
        return self

    def __next__(self) -> Batch:
        if self.current is not None:  # the loop moved on: that batch's slot goes back
            self.current.release()
            self.current = None
        while True:
            if self._over():
                raise StopIteration
            w = self.next_window
            self.next_window += 1
            deadline = self._deadline(w)
            parts = [self._take(st, w, deadline) for st in self.states]
            if self._over() and (self.until == "first" or all(p is None for p in parts)):
                for p in parts:  # a window that the source which ended has no part of
                    if p is not None:
                        p.release()
                raise StopIteration
            if all(p is None for p in parts) and all(
                    st.pending is not None or st.ended for st in self.states):
                continue  # every source has moved past it (real time, a slow consumer)
            batch = self._assemble(w, parts)
            if batch is not None:
                self.current = batch
                return batch

    def _over(self) -> bool:
        ended = [st.ended for st in self.states]
        return all(ended) or (self.until == "first" and any(ended))

    def _deadline(self, w: int) -> float:
        """Until when window w waits for its sources: `stall_timeout` after the window's end
        when the sources come in real time (files paced, live sources, arrival times), else
        after the wait starts; one deadline for every source of the window."""
        now = time.monotonic()
        if self.paced:
            return max(now, self.t0 + (w + 1) * self.window) + self.stall_timeout
        return now + self.stall_timeout

    def _take(self, st: SourceState, w: int, deadline: float) -> ReadSlot | None:
        """The slot of source `st` for window w, or None (ended, failed, stalled, dropped)."""
        if st.ended:
            return None
        while True:
            slot = st.pending
            st.pending = None
            if slot is None:
                slot = st.ring.get(timeout=max(0.0, min(0.2, deadline - time.monotonic())))
            if slot is None:
                if not st.process.is_alive() and st.ring.get(timeout=0) is None:
                    st.ended = True
                    st.stats["failed"] = st.stats["failed"] or (
                        f"the decoder process died (exit {st.process.exitcode})")
                    return None
                if time.monotonic() >= deadline:
                    st.stats["stalled"] += 1
                    return None
                continue
            meta = slot.meta
            self._merge_stats(st, meta.get("stats", {}))
            if meta.get("end"):
                slot.release()
                st.ended = True
                if meta.get("error"):
                    st.stats["failed"] = meta["error"]
                return None
            sw = meta["window"]
            if sw < w:  # came after the stream moved past it
                st.stats["late"] += 1
                slot.release()
                continue
            if sw > w:  # windows before it were dropped (real time, slow consumer)
                st.pending = slot
                st.stats["windows_dropped"] += 1
                return None
            return slot

    def _merge_stats(self, st: SourceState, decoder: dict) -> None:
        for k in ("decoded", "dropped", "duplicated"):
            if k in decoder:
                st.stats[k] = decoder[k]

    def _assemble(self, w: int, parts: list[ReadSlot | None]) -> Batch | None:
        n, lay = len(self.states), self.layout
        slot = self.batches.reserve(timeout=None)
        if slot is None:
            raise RingError("the stream was closed")
        frames, mask, pts = _batch_arrays(slot.view(np.uint8), lay, n)
        for s, (st, part) in enumerate(zip(self.states, parts)):
            if part is None:
                mask[s] = False
                pts[s] = math.nan
                frames[s] = 0
            else:
                f, m, p = lay.arrays(part.view(np.uint8))
                np.copyto(frames[s], f)
                mask[s], pts[s] = m, p
                part.release()
            st.stats["missing"] += int(lay.frames - mask[s].sum())  # as delivered
            self._fill_missing(st, frames[s], mask[s])
        if self.on_missing == "drop" and not mask.all():
            slot.abort()
            return None
        slot.commit({"window": w})
        got = self.batches.get(timeout=None)
        return Batch(got, lay, n, w, w * self.window, [dict(st.stats) for st in self.states])

    def _fill_missing(self, st: SourceState, frames: np.ndarray, mask: np.ndarray) -> None:
        """Frames without a source frame: the last real one (repeat) or black."""
        if self.on_missing == "repeat":
            last = st.last
            for k in range(len(mask)):
                if mask[k]:
                    last = frames[k]
                elif last is not None:
                    frames[k] = last
                else:
                    frames[k] = 0
            if mask.any():
                st.last = frames[np.flatnonzero(mask)[-1]].copy()
        elif not mask.all():
            frames[~mask] = 0


def stream_rate(sources: Sequence[str], fps: float | None) -> float:
    """`fps`, or the sources' common frame rate when it is None (UsageError when they
    differ or do not say)."""
    from ...media.video.stream import probe_rate
    if fps is not None:
        return float(fps)
    rates = [probe_rate(s) for s in sources]
    if None in rates or len(set(rates)) != 1:
        shown = ", ".join(f"{s}: {r or 'unknown'}" for s, r in zip(sources, rates))
        raise UsageError(f"streams: the sources' frame rates differ or are unknown ({shown}); "
                         "give fps=")
    return float(rates[0])


def streams(sources: Sequence[str], *, window: float = 1.0, fps: float | None = None,
            size: tuple[int, int] = (640, 360), align: str = "pts", on_missing: str = "repeat",
            stall_timeout: float = 2.0, realtime: bool = False, until: str = "all",
            ring_windows: int = 4, tolerance: float | None = None) -> Stream:
    """Time-aligned windows of frames from several videos or live sources.

    >>> with datamill.streams(["cam1.mp4", "cam2.mp4"], window=1.0, fps=25,
    ...                       size=(640, 360)) as stream:                  # doctest: +SKIP
    ...     for batch in stream:
    ...         batch.frames   # (2, 25, 360, 640, 3) uint8, read-only, in shared memory
    ...         batch.mask     # (2, 25) bool: False where a source had no frame then

    Each source is decoded and resized in its own process straight into shared memory.
    `fps`: the stream's rate (default: the sources' common rate; required when they differ);
    `fps * window` must be a whole number.  `align="pts"`: each source's timestamps from
    its first frame; "arrival": when frames arrive.  `on_missing`: a missing frame repeats
    the last one, is black, or the window is dropped ("drop").  A source that gives nothing
    for `stall_timeout` seconds is marked stalled for that window, and the stream goes on.
    `realtime`: files are paced to real time and a slow consumer loses the oldest windows
    (counted); otherwise as fast as the decoders and the consumer go.  The stream ends when
    every source has ended (`until="all"`) or the first has ("first").  `ring_windows`:
    windows buffered per source.  `tolerance`: seconds between a target instant and the
    nearest source frame beyond which the frame is missing (default max(1/fps, 0.25)).
    """
    sources = [str(s) for s in sources]
    if not sources:
        raise UsageError("streams: give at least one source")
    if align not in ALIGN:
        raise UsageError(f"streams: align must be one of {', '.join(ALIGN)}, not {align!r}")
    if on_missing not in ON_MISSING:
        raise UsageError(f"streams: on_missing must be one of {', '.join(ON_MISSING)}, "
                         f"not {on_missing!r}")
    if until not in UNTIL:
        raise UsageError(f"streams: until must be one of {', '.join(UNTIL)}, not {until!r}")
    fps = stream_rate(sources, fps)
    frames = fps * window
    if frames < 1 or abs(frames - round(frames)) > 1e-6:
        raise UsageError(f"streams: fps * window must be a whole number of frames, not "
                         f"{fps} * {window} = {frames:g}")
    width, height = size
    if width < 2 or height < 2 or width % 2 or height % 2:
        raise UsageError(f"streams: size must be even and at least 2x2, not {width}x{height}")
    if stall_timeout <= 0 or ring_windows < 2:
        raise UsageError("streams: stall_timeout must be > 0 and ring_windows >= 2")
    tol = tolerance if tolerance is not None else max(1.0 / fps, 0.25)
    return Stream(sources, window=window, fps=fps, size=(width, height), align=align,
                  on_missing=on_missing, stall_timeout=stall_timeout, realtime=realtime,
                  until=until, ring_windows=ring_windows, tolerance=tol)
