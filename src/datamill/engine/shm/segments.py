"""Shared-memory segments that are removed after any ending of their owner.

A segment is a file in /dev/shm (a tmpfs: its pages are memory).  Each one is recorded
*before* it is created in a registry, one small JSON file per segment under
`$XDG_CACHE_HOME/datamill/shm/` (or `~/.cache/datamill/shm/`), naming the segment and its
owner: pid and the process's start time (field 22 of /proc/PID/stat), so that a pid reused
by another process is not taken for the owner.  The owner removes its segments when it
closes them, and at exit (atexit: normal end, an exception, Ctrl-C).  A SIGKILLed owner
cannot: `remove_orphans()`, which runs before every new segment is created, removes the
segments of registry entries whose owner is dead, and only those: never a segment found by
its name alone, never one whose owner lives.

`multiprocessing.shared_memory` is not used: on Python < 3.13 every process that opens a
segment registers it with its resource_tracker, which unlinks it when *that* process ends
(under the owner's feet) and warns about "leaked shared_memory objects".  A plain file in
/dev/shm, mapped with mmap, has neither problem.

Space is reserved when the segment is created (posix_fallocate): a tmpfs that is too small
fails there, with a message, instead of killing a process with SIGBUS on a later write.
"""
from __future__ import annotations

import atexit
import contextlib
import errno
import json
import mmap
import os
import re
import secrets
from pathlib import Path

from ...atomic import write_text_atomic

SHM_DIR = "/dev/shm"
_PREFIX = "datamill-"
_SEGMENT_NAME = re.compile(r"^datamill-[A-Za-z0-9_.-]+$")
_owned: dict[str, int] = {}  # segment -> pid of the process that created it


class RingError(Exception):
    """A ring or its segment cannot be used: no room in /dev/shm, a slot used after release,
    a segment that is gone or not a ring."""


def registry_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "datamill" / "shm"


def process_start(pid: int) -> int | None:
    """The start time of process `pid` (clock ticks after boot), or None if it is not
    running (no such process, or a zombie) or the system has no /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2:].split()  # after "pid (comm) ": field 3 onwards
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[22 - 3])


def owner_alive(pid: int, start: int | None) -> bool:
    """Whether the process recorded as (`pid`, `start`) still runs."""
    if start is not None or os.path.exists("/proc/self/stat"):
        return start is not None and process_start(pid) == start
    try:  # no /proc: the pid alone
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def shm_free_bytes() -> int:
    st = os.statvfs(SHM_DIR)
    return st.f_bavail * st.f_frsize


def check_room(size: int, what: str, lower: str) -> None:
    """Raise RingError unless /dev/shm has `size` bytes free.  `what` describes the request,
    `lower` names the option that makes it smaller."""
    if size > shm_free_bytes():
        raise _no_room(size, what, lower)


def _no_room(size: int, what: str, lower: str) -> RingError:
    free = shm_free_bytes()
    return RingError(
        f"{what} needs {size:,} bytes ({size / 2**20:,.0f} MiB) of shared memory, but "
        f"{SHM_DIR} has {free:,} bytes ({free / 2**20:,.0f} MiB) free; lower {lower}, or "
        f"give the machine or container more shared memory (docker run --shm-size=...)")


def remove_orphans() -> list[str]:
    """Remove the segments whose registered owner is dead, and their entries; return their
    names.  Segments of live owners, and files the registry does not name, are left alone."""
    removed = []
    try:
        entries = list(os.scandir(registry_dir()))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if entry.name.startswith(".") or not entry.name.endswith(".json"):
            continue  # a registration being written
        try:
            rec = json.loads(Path(entry.path).read_text(encoding="utf-8"))
            segment, pid, start = rec["segment"], int(rec["pid"]), rec["start"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if owner_alive(pid, start) or not _SEGMENT_NAME.match(segment):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(SHM_DIR, segment))
            removed.append(segment)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path)
    return removed


def create_segment(name: str, size: int, what: str, lower: str) -> tuple[str, mmap.mmap]:
    """Create, register and map a new segment of `size` bytes; return its name and mapping.
    `what` and `lower` word the error when /dev/shm has no room (see `check_room`).

    The registry entry is written first, so an owner killed at any moment leaves at most an
    entry whose segment is missing (also removed by `remove_orphans`)."""
    segment = f"{_PREFIX}{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}-{os.getpid()}-{secrets.token_hex(4)}"
    pid = os.getpid()
    write_text_atomic(registry_dir() / f"{segment}.json",
                      json.dumps({"segment": segment, "pid": pid, "start": process_start(pid),
                                  "bytes": size}), replace=True)
    _owned[segment] = pid
    try:
        fd = os.open(os.path.join(SHM_DIR, segment), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.posix_fallocate(fd, 0, size)
            return segment, mmap.mmap(fd, size)
        finally:
            os.close(fd)
    except OSError as exc:
        remove_segment(segment)
        if exc.errno == errno.ENOSPC:
            raise _no_room(size, what, lower) from None
        raise


def open_segment(segment: str) -> mmap.mmap:
    """Map an existing segment (a producer attaching to its owner's ring)."""
    if not _SEGMENT_NAME.match(segment):
        raise RingError(f"{segment!r} is not a datamill segment name")
    try:
        fd = os.open(os.path.join(SHM_DIR, segment), os.O_RDWR)
    except FileNotFoundError:
        raise RingError(f"shared-memory segment {segment} is gone (its owner closed it or "
                        "ended)") from None
    try:
        return mmap.mmap(fd, 0)
    finally:
        os.close(fd)


def remove_segment(segment: str) -> None:
    """The owner's removal of its segment and registry entry (idempotent)."""
    for path in (os.path.join(SHM_DIR, segment), registry_dir() / f"{segment}.json"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    _owned.pop(segment, None)


@atexit.register
def _remove_owned_at_exit() -> None:
    # A child forked by the owner inherits `_owned`: it must not remove its parent's segments.
    for segment, pid in list(_owned.items()):
        if pid == os.getpid():
            remove_segment(segment)
