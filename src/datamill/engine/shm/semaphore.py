"""Process-shared POSIX semaphores placed in a shared-memory segment.

`sem_init(..., pshared=1)` on memory that several processes map gives them a semaphore
without a name, a file in /dev/shm or a tracker process: whatever started a process (fork,
spawn, or nothing of ours), mapping the segment is enough to use it.  multiprocessing's own
semaphores can only be handed to processes it starts, and with the spawn method leave
named files behind a SIGKILLed owner.  Waits release the GIL (ctypes calls do).
"""
from __future__ import annotations

import ctypes
import functools
import time
from typing import Any


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


@functools.lru_cache(maxsize=None)
def _libc() -> Any:
    libc = ctypes.CDLL(None, use_errno=True)
    for name in ("sem_init", "sem_post", "sem_trywait", "sem_timedwait"):
        getattr(libc, name).restype = ctypes.c_int
    libc.sem_init.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint]
    libc.sem_post.argtypes = libc.sem_trywait.argtypes = [ctypes.c_void_p]
    libc.sem_timedwait.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Timespec)]
    return libc


class Semaphore:
    """The semaphore at `addr`, in memory that processes share (room for a sem_t); `init`
    it once, in the process that creates the memory."""

    __slots__ = ("_addr",)

    def __init__(self, addr: int):
        self._addr = ctypes.c_void_p(addr)

    def init(self, value: int) -> None:
        if _libc().sem_init(self._addr, 1, value) != 0:
            raise OSError(ctypes.get_errno(), "sem_init failed")

    def post(self) -> None:
        _libc().sem_post(self._addr)

    def try_acquire(self) -> bool:
        return _libc().sem_trywait(self._addr) == 0

    def acquire(self, seconds: float) -> bool:
        """Wait at most `seconds`; False on timeout or when a signal interrupts the wait
        (its Python handler runs when this returns: Ctrl-C raises in the caller)."""
        t = time.time() + seconds
        return _libc().sem_timedwait(self._addr, _Timespec(int(t), int(t % 1 * 1e9))) == 0
