"""A ring of fixed-size slots in one shared-memory segment, from producers to a consumer.

The consumer creates the ring (`Ring.create`) and owns its segment; producers attach by
`ring.handle` (plain data: it pickles to processes started by fork, spawn or anything else)
or use the `Ring` they inherited through fork (a `Ring` pickles as its handle).  A producer
`reserve()`s a free slot, writes into `slot.view(dtype, shape)` (a NumPy array over the
slot's bytes: the data is written once, in place) and `commit()`s it with a small `meta`
dict; the consumer `get()`s committed slots in commit order as read-only views over the
same memory, and `release()`s each one back to the producers.  Any number of producers and
consumers may share a ring; slots are handed out in commit order (`close()` ends the ring
for all of them: with several producers, call it when the last one is done).  Linux: the
segment is a file in /dev/shm, and owners are recognised through /proc.

Everything lives in the segment: a header of counters, two queues of slot indices (free
slots; committed slots in commit order), a small area per slot for its pickled `meta`, the
slots themselves (page aligned), and three POSIX semaphores (`sem_init` with pshared=1)
counting free and committed slots and guarding the queues.  Waiting is sleeping on those
semaphores (no core is burnt), in waits of at most `POLL` seconds so that a waiter notices
`close()` and, in a producer, the death of the ring's owner.

A full ring blocks `reserve()` (backpressure) unless the ring was created `drop_oldest`:
then `reserve()` takes back the oldest committed slot that no consumer has got yet and
counts it in `dropped`, so a slow consumer sees the newest data and memory stays flat.

Endings: `close()` from either side makes waiting `reserve()`s return None, and `get()`
return the slots still committed and then None.  The owner's `close()` (or its `with`
block's end, or its exit) also removes the segment (see `segments`); the memory goes once
the last process has dropped its mapping.  Producers that should die with the owner call
`die_with_owner(ring)`.  A producer killed while holding a slot loses that slot (the ring
has one fewer); one killed inside the microseconds it holds the queues' lock leaves the
lock taken, and the next user of the ring gets a RingError after `LOCK_TIMEOUT` seconds.
A consumer waiting on a ring whose producers all died waits until its `get(timeout)`
times out: watching the producer processes is the caller's part.
"""
from __future__ import annotations

import contextlib
import math
import os
import pickle
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from ..executors.local import _PR_SET_PDEATHSIG, WATCH_INTERVAL, _prctl
from .semaphore import Semaphore
from .segments import (RingError, check_room, create_segment, open_segment, owner_alive,
                       process_start, remove_orphans, remove_segment)

POLL = 0.2  # seconds: longest sleep between checks for close() and the owner's death
LOCK_TIMEOUT = 5.0  # seconds: the queues' lock is held for microseconds; longer means its holder died
_MAGIC = int.from_bytes(b"dmring01", "little")  # marks an initialised ring segment
_PAGE = 4096
_SEM_BYTES = 64  # room for one sem_t (32 bytes with glibc)
_MADV_POPULATE_WRITE = 23  # Linux 5.14+: map every page of a range now, not at first touch
_WAKE = 64  # posts that close() makes on each semaphore to wake its waiters at once
# int64 fields of the header, after the three semaphores
(MAGIC, SLOTS, SLOT_BYTES, META_BYTES, DROP_OLDEST, CLOSED, DROPPED,
 COMMITTED_HEAD, COMMITTED_TAIL, FREE_HEAD, FREE_TAIL) = range(11)
_FIELDS = 16


@dataclass(frozen=True)
class RingHandle:
    """What a producer needs to attach to a ring: plain data, picklable to any process of
    this machine.  The semaphores live in the segment itself."""
    segment: str
    slot_bytes: int
    slots: int
    owner_pid: int
    owner_start: int | None


@dataclass(frozen=True)
class _Layout:
    slot_bytes: int
    slots: int
    meta_bytes: int

    @property
    def header(self) -> int:
        return 3 * _SEM_BYTES

    @property
    def queues(self) -> int:
        return self.header + _FIELDS * 8

    @property
    def meta(self) -> int:
        return _align(self.queues + 2 * 4 * self.slots, 64)

    @property
    def meta_stride(self) -> int:
        return _align(self.meta_bytes, 8)

    @property
    def data(self) -> int:
        return _align(self.meta + self.slots * self.meta_stride, _PAGE)

    @property
    def stride(self) -> int:
        return _align(self.slot_bytes, _PAGE)

    @property
    def size(self) -> int:
        return self.data + self.slots * self.stride


def _align(n: int, to: int) -> int:
    return -(-n // to) * to


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


class Ring:
    """`slots` slots of `slot_bytes` bytes each in one shared-memory segment, created by
    its owner (the consumer side) with `Ring.create`; producers attach by `ring.handle`.

    >>> with Ring.create(slot_bytes=6_220_800, slots=4) as ring:       # doctest: +SKIP
    ...     # in a producer process: ring = Ring.attach(handle)
    ...     slot = ring.reserve()
    ...     decode_into(slot.view(np.uint8, (1080, 1920, 3)))
    ...     slot.commit({"pts": 0.04})
    ...     # in the consumer
    ...     with ring.get() as s:
    ...         frame = s.view(np.uint8, (1080, 1920, 3))           # read-only, no copy
    """

    def __init__(self, handle: RingHandle, mm: Any):
        """Use `Ring.create` or `Ring.attach`."""
        self.handle = handle
        self._mm = mm
        self._buf = memoryview(mm)
        self._ro = self._buf.toreadonly()
        self._h = np.ndarray(_FIELDS, np.int64, buffer=self._buf, offset=3 * _SEM_BYTES)
        layout = _Layout(handle.slot_bytes, handle.slots, int(self._h[META_BYTES]))
        self._layout = layout
        self._committed = np.ndarray(handle.slots, np.int32, buffer=self._buf, offset=layout.queues)
        self._free_q = np.ndarray(handle.slots, np.int32, buffer=self._buf,
                                  offset=layout.queues + 4 * handle.slots)
        base = np.frombuffer(self._buf, np.uint8, count=1).ctypes.data
        self._lock, self._free, self._used = (Semaphore(base + i * _SEM_BYTES) for i in range(3))
        self._drop_oldest = bool(self._h[DROP_OLDEST])
        self._mapped_in: int | None = None  # the process whose page tables map every page
        self._map_all()

    def _map_all(self) -> None:
        """Map every page of the segment into this process's page tables now: else each
        first touch of a 4 KiB page costs a page fault, in each process (a child forked
        with the ring inherits none of its parent's), and a large slot costs tens of
        thousands of them on its first trip.  Done when the ring is created or attached,
        and in a child that inherited it through fork, on its first `reserve()` or `get()`."""
        self._mapped_in = os.getpid()
        with contextlib.suppress(OSError, ValueError):  # older kernels: pages fault in on use
            self._mm.madvise(_MADV_POPULATE_WRITE)

    @classmethod
    def create(cls, slot_bytes: int, slots: int, *, name: str = "ring",
               drop_oldest: bool = False, meta_bytes: int = 1024,
               size_option: str = "the ring's slots or slot_bytes") -> "Ring":
        """A new ring, owned by this process.  Segments left by dead owners are removed
        first.  `meta_bytes`: room per slot for its pickled meta.  `size_option` names,
        in the error raised when /dev/shm is too small, the option that sizes the ring."""
        if slot_bytes < 1 or slots < 1 or meta_bytes < 8:
            raise ValueError(f"a ring needs slot_bytes >= 1, slots >= 1 and meta_bytes >= 8, "
                             f"not {slot_bytes}, {slots}, {meta_bytes}")
        remove_orphans()
        layout = _Layout(slot_bytes, slots, meta_bytes)
        what = f"a ring of {slots} slots of {slot_bytes:,} bytes"
        check_room(layout.size, what, size_option)
        segment, mm = create_segment(name, layout.size, what, size_option)
        h = np.ndarray(_FIELDS, np.int64, buffer=mm, offset=3 * _SEM_BYTES)
        h[[SLOTS, SLOT_BYTES, META_BYTES, DROP_OLDEST]] = slots, slot_bytes, meta_bytes, drop_oldest
        h[FREE_HEAD] = slots
        np.ndarray(slots, np.int32, buffer=mm, offset=layout.queues + 4 * slots)[:] = np.arange(slots)
        h[MAGIC] = _MAGIC
        del h
        pid = os.getpid()
        ring = cls(RingHandle(segment, slot_bytes, slots, pid, process_start(pid)), mm)
        ring._lock.init(1)
        ring._free.init(slots)
        ring._used.init(0)
        return ring

    @classmethod
    def attach(cls, handle: RingHandle) -> "Ring":
        """The ring of `handle`, in a producer (or a second consumer)."""
        mm = open_segment(handle.segment)
        h = np.ndarray(_FIELDS, np.int64, buffer=mm, offset=3 * _SEM_BYTES)
        if len(mm) < 3 * _SEM_BYTES + 8 * _FIELDS or h[MAGIC] != _MAGIC or \
                (h[SLOTS], h[SLOT_BYTES]) != (handle.slots, handle.slot_bytes):
            raise RingError(f"shared-memory segment {handle.segment} is not the ring of {handle}")
        del h
        return cls(handle, mm)

    def __reduce__(self) -> tuple:
        return (Ring.attach, (self.handle,))

    # -- state ------------------------------------------------------------------------
    @property
    def slots(self) -> int:
        return self.handle.slots

    @property
    def slot_bytes(self) -> int:
        return self.handle.slot_bytes

    @property
    def dropped(self) -> int:
        """Slots taken back by `drop_oldest` before any consumer got them."""
        return int(self._h[DROPPED])

    @property
    def closed(self) -> bool:
        return bool(self._h[CLOSED])

    @property
    def is_owner(self) -> bool:
        return self.handle.owner_pid == os.getpid()

    # -- producer side ----------------------------------------------------------------
    def reserve(self, timeout: float | None = None) -> "Slot | None":
        """A free slot to write.  While the ring is full this waits (backpressure), or,
        with `drop_oldest`, takes back the oldest committed slot no consumer has got.
        None when `timeout` seconds pass, the ring is closed or its owner died."""
        if self._mapped_in != os.getpid():
            self._map_all()
        deadline = _deadline(timeout)
        while not self.closed:
            if self._free.try_acquire():
                return self._slot(self._free_q, FREE_TAIL)
            if self._drop_oldest and self._used.try_acquire():
                slot = self._slot(self._committed, COMMITTED_TAIL, drop=True)
                if slot is not None:
                    return slot
                continue
            # Nothing free (nor, when dropping, committed: consumers hold every slot).
            if not self._wait(self._free, deadline):
                return None
            if not self.closed:
                return self._slot(self._free_q, FREE_TAIL)
        return None

    def _slot(self, queue: np.ndarray, tail: int, drop: bool = False) -> "Slot | None":
        with self._locked():
            index = self._pop(queue, tail)
            if index is not None and drop:
                self._h[DROPPED] += 1
        return None if index is None else Slot(self, index)

    def _commit(self, index: int, meta: dict | None) -> None:
        off = self._layout.meta + index * self._layout.meta_stride
        if meta:
            blob = pickle.dumps(meta, protocol=pickle.HIGHEST_PROTOCOL)
            if len(blob) > self._layout.meta_stride - 4:
                raise RingError(f"the meta of a slot takes {len(blob) + 4} bytes pickled; the "
                                f"ring has room for {self._layout.meta_stride}: create it with "
                                "a larger meta_bytes (meta is for a few numbers and strings)")
            self._buf[off + 4:off + 4 + len(blob)] = blob
            self._buf[off:off + 4] = len(blob).to_bytes(4, "little")
        else:
            self._buf[off:off + 4] = bytes(4)
        self._put(self._committed, COMMITTED_HEAD, index)
        self._used.post()

    def _give_back(self, index: int) -> None:
        self._put(self._free_q, FREE_HEAD, index)
        self._free.post()

    # -- consumer side ----------------------------------------------------------------
    def get(self, timeout: float | None = None) -> "ReadSlot | None":
        """The next committed slot, in commit order.  None when `timeout` seconds pass, or
        when the ring is closed and no committed slot is left (or a producer's owner died)."""
        if self._mapped_in != os.getpid():
            self._map_all()
        if self._wait(self._used, _deadline(timeout)) or self.closed:
            with self._locked():
                index = self._pop(self._committed, COMMITTED_TAIL)
            if index is not None:
                off = self._layout.meta + index * self._layout.meta_stride
                n = int.from_bytes(self._buf[off:off + 4], "little")
                meta = pickle.loads(self._buf[off + 4:off + 4 + n]) if n else {}
                return ReadSlot(self, index, meta)
        return None

    # -- endings ----------------------------------------------------------------------
    def close(self) -> None:
        """Stop the ring: waiting and later `reserve()`s return None, `get()`s return what
        is still committed, then None.  In the owner, also remove the segment."""
        self._h[CLOSED] = 1
        for _ in range(_WAKE):
            self._free.post()
            self._used.post()
        if self.is_owner:
            self.unlink()

    def unlink(self) -> None:
        """Remove the segment and its registry entry (the owner's part; idempotent).
        Processes that map it keep their mapping until they drop the ring and its views."""
        if self.is_owner:
            remove_segment(self.handle.segment)

    def __enter__(self) -> "Ring":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Ring({self.handle.segment}, {self.slots} x {self.slot_bytes:,} bytes"
                f"{', drop_oldest' if self._drop_oldest else ''}{', closed' if self.closed else ''})")

    # -- internals --------------------------------------------------------------------
    def _wait(self, sem: Semaphore, deadline: float | None) -> bool:
        """Acquire `sem` by `deadline` (None: no limit); False if the deadline passes, the
        ring is closed or (seen from another process) its owner died."""
        if sem.try_acquire():
            return True
        owner = None if self.is_owner else (self.handle.owner_pid, self.handle.owner_start)
        while not self.closed and (owner is None or owner_alive(*owner)):
            left = POLL if deadline is None else min(POLL, deadline - time.monotonic())
            if left <= 0:
                return False
            if sem.acquire(left):
                return True
        return False

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if not self._lock.try_acquire():
            give_up = time.monotonic() + LOCK_TIMEOUT
            while not self._lock.acquire(POLL):
                if time.monotonic() > give_up:
                    raise RingError(f"ring {self.handle.segment}: its lock has been held for "
                                    f"{LOCK_TIMEOUT:.0f} s; a process that used the ring died "
                                    "holding it")
        try:
            yield
        finally:
            self._lock.post()

    def _put(self, queue: np.ndarray, head: int, index: int) -> None:
        with self._locked():
            queue[self._h[head] % self.slots] = index
            self._h[head] += 1

    def _pop(self, queue: np.ndarray, tail: int) -> int | None:
        """The oldest index of `queue` (its head field is `tail - 1`), under the lock."""
        if self._h[tail - 1] == self._h[tail]:
            return None
        index = int(queue[self._h[tail] % self.slots])
        self._h[tail] += 1
        return index

    def _array(self, index: int, dtype: Any, shape: Any, readonly: bool) -> np.ndarray:
        dtype = np.dtype(dtype)
        if shape is None:
            shape = (self.slot_bytes // dtype.itemsize,)
        elif isinstance(shape, int):
            shape = (shape,)
        count = math.prod(shape)
        if count * dtype.itemsize > self.slot_bytes:
            raise RingError(f"a view of {count * dtype.itemsize:,} bytes ({dtype}, "
                            f"{tuple(shape)}) does not fit a slot of {self.slot_bytes:,} bytes")
        # frombuffer keeps the read-only memoryview as the array's base, so that its
        # writeable flag cannot be set back to True (np.ndarray(buffer=...) would not).
        return np.frombuffer(self._ro if readonly else self._buf, dtype, count,
                             self._layout.data + index * self._layout.stride).reshape(shape)


class Slot:
    """A slot reserved for writing: fill `view(dtype, shape)`, then `commit(meta)` to hand
    it to the consumer, or `abort()` to give it back.  As a context manager, a slot not
    committed by the end of the block is aborted."""

    __slots__ = ("index", "_ring", "_done")

    def __init__(self, ring: Ring, index: int):
        self.index = index
        self._ring = ring
        self._done = False

    def view(self, dtype: Any = np.uint8, shape: Any = None) -> np.ndarray:
        """A writable array over the slot's bytes (the whole slot when `shape` is None)."""
        self._check()
        return self._ring._array(self.index, dtype, shape, readonly=False)

    def commit(self, meta: dict | None = None) -> None:
        """Make the slot readable, after every slot committed before it.  `meta`: a few
        numbers and strings (a frame's pts ...), pickled into the slot's small meta area."""
        self._check()
        self._ring._commit(self.index, meta)
        self._done = True

    def abort(self) -> None:
        self._check()
        self._done = True
        self._ring._give_back(self.index)

    def _check(self) -> None:
        if self._done:
            raise RingError(f"slot {self.index} was already committed or aborted; "
                            "reserve() another")

    def __enter__(self) -> "Slot":
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self._done:
            self.abort()


class ReadSlot:
    """A committed slot, for reading: `view(dtype, shape)` is a read-only array over shared
    memory (no copy); `release()` hands the slot back to the producers, after which its
    views must not be used (the producer overwrites them) and `view()` raises: `copy()`
    first what must outlive the slot.  As a context manager, released at the block's end."""

    __slots__ = ("index", "meta", "_ring", "_released")

    def __init__(self, ring: Ring, index: int, meta: dict):
        self.index = index
        self.meta = meta
        self._ring = ring
        self._released = False

    def view(self, dtype: Any = np.uint8, shape: Any = None) -> np.ndarray:
        if self._released:
            raise RingError(f"slot {self.index} was released: its memory now belongs to the "
                            "producer; use .copy() before release() to keep the data")
        return self._ring._array(self.index, dtype, shape, readonly=True)

    def copy(self, dtype: Any = np.uint8, shape: Any = None) -> np.ndarray:
        """An ordinary array holding the slot's data, which outlives the slot."""
        return self.view(dtype, shape).copy()

    def release(self) -> None:
        """Give the slot back to the producers (idempotent)."""
        if not self._released:
            self._released = True
            self._ring._give_back(self.index)

    def __enter__(self) -> "ReadSlot":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def die_with_owner(ring: Ring | RingHandle, parent_death_signal: bool = True) -> None:
    """Make this process (a producer) die when the ring's owner does, even by SIGKILL.

    When the owner is this process's parent and `parent_death_signal` is true, the kernel
    kills this process as soon as the owner's thread that forked it ends (Linux's parent-
    death signal; pass False when the owner forks producers from a thread that may end
    before the stream).  A daemon thread also checks the owner every `WATCH_INTERVAL`
    seconds by pid and start time, for every other case.
    """
    handle = ring.handle if isinstance(ring, Ring) else ring
    owner = (handle.owner_pid, handle.owner_start)
    prctl = _prctl() if parent_death_signal and os.getppid() == handle.owner_pid else None
    if prctl is not None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if not owner_alive(*owner):  # it died before the signal was armed
        os.kill(os.getpid(), signal.SIGKILL)
    threading.Thread(target=_watch_owner, args=owner, name="datamill-watch-ring-owner",
                     daemon=True).start()


def _watch_owner(pid: int, start: int | None) -> None:
    while True:
        time.sleep(WATCH_INTERVAL)
        if not owner_alive(pid, start):
            os.kill(os.getpid(), signal.SIGKILL)
