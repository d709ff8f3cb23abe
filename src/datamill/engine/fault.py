"""Crash points for tests: `DATAMILL_FAULT=POINT:ACTION[:N]` makes the N-th pass (default the
first) of this process through `fault(POINT)` kill it (kill), interrupt it as Ctrl-C does
(interrupt), or fail as a full disk does (enospc).  Read only by the engine; unset, a pass
costs one dictionary look-up.

With DATAMILL_FAULT_ONCE=PATH the fault fires in one process only, the first to create PATH
(a worker killed once, not every worker that replaces it).

Points: startup (the run holds its lock and cleaned up), submitted (the driver sent a task),
task-end (in the worker, after the task wrote its outputs, before it reports), commit (in the
driver, the first results of a finished task received, before they are recorded), ledger (in the
driver, before a flush of outcomes), reports (between manifest.parquet and stats.json).
"""
from __future__ import annotations

import errno
import os
import signal
from collections import Counter

_passes: Counter[str] = Counter()


def fault(point: str) -> None:
    spec = os.environ.get("DATAMILL_FAULT")
    if not spec:
        return
    name, _, rest = spec.partition(":")
    if name != point:
        return
    action, _, nth = rest.partition(":")
    _passes[point] += 1
    if _passes[point] != int(nth or 1):
        return
    once = os.environ.get("DATAMILL_FAULT_ONCE")
    if once:
        try:
            os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "interrupt":
        os.kill(os.getpid(), signal.SIGINT)
    elif action == "enospc":
        raise OSError(errno.ENOSPC, f"No space left on device (DATAMILL_FAULT at {point})")
    else:
        raise ValueError(f"DATAMILL_FAULT: unknown action {action!r}")
