"""One run per DST: a lock file in the job's state folder.

`StateLock(state_dir).acquire()` takes an exclusive `flock` on `state_dir/lock` (released by
the kernel when the process dies, even by kill -9) and writes the holder's pid and host into
it.  A second run on this host fails at once, naming the holder.  A file naming another host
means a run there holds, or held, the lock (flock does not cross every network filesystem):
it is never taken over without `break_lock`.  A file naming a process of this host that no
longer holds the flock is left over from a dead run and is taken over.

Forked workers would inherit the locked file description and keep the lock after their
driver died: the descriptor is closed in every child forked after `acquire`.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path
from typing import Any

from ..errors import UsageError

_held: list["StateLock"] = []


def _close_in_child() -> None:
    for lock in _held:
        if lock._fd is not None:
            try:
                os.close(lock._fd)
            except OSError:
                pass
            lock._fd = None


os.register_at_fork(after_in_child=_close_in_child)


class StateLock:
    def __init__(self, state_dir: str | os.PathLike, dst: str = ""):
        self.path = Path(state_dir) / "lock"
        self.dst = dst or str(state_dir)
        self._fd: int | None = None

    def holder(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            return {}

    def acquire(self, break_lock: bool = False) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise UsageError(f"the state folder {self.path.parent} is not writable ({exc}); "
                             "choose another with --state-dir") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            h = self.holder()
            raise UsageError(f"DST {self.dst} is in use by another datamill run (pid "
                             f"{h.get('pid', '?')} on host {h.get('host', '?')}); wait for it "
                             "to end, or stop it") from None
        host = socket.gethostname()
        h = self.holder()
        if h.get("host") not in (None, host) and not break_lock:
            os.close(fd)
            raise UsageError(
                f"DST {self.dst} is locked by a run on host {h['host']} (pid {h.get('pid', '?')}), "
                f"see {self.path}; if no run there is alive, rerun with --break-lock")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": host}).encode(), 0)
        self._fd = fd
        _held.append(self)

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None
        if self in _held:
            _held.remove(self)

    def __enter__(self) -> "StateLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
