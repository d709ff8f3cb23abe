"""`datamill status DST`: summarise any job folder from its ledger, running nothing.

The ledger is opened read-only: status creates and changes nothing, in DST or elsewhere.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import socket
import sqlite3
from pathlib import Path

from ..errors import UsageError
from .ledger import Ledger
from .dst import Dst, state_path


def describe(dst: str | Path, state_dir: str | Path | None = None) -> str:
    """The summary of the job in `dst` (a folder or a URL) from its ledger; a URL's ledger
    is in `state_dir` or its default state folder.  Raises UsageError when there is no
    readable datamill ledger to summarise."""
    out = Dst(dst)
    dst = out.location
    path = state_path(out, state_dir)
    if not path.is_file():
        if out.is_remote or state_dir is not None:
            raise UsageError(f"no datamill ledger for {dst} in {path.parent} (the ledger of a "
                             "job stays on the machine that ran it; give its --state-dir)")
        if not Path(dst).is_dir():
            raise UsageError(f"{dst} is not a folder" if Path(dst).exists()
                             else f"{dst} does not exist")
        raise UsageError(f"{dst} is not a datamill job folder (no {path.relative_to(dst)})")
    try:
        ledger = Ledger(path, readonly=True)
    except (sqlite3.Error, ValueError) as exc:
        raise _unreadable(path, exc) from exc
    try:
        return "\n".join(_summary(ledger, dst, path))
    except (sqlite3.Error, ValueError) as exc:
        raise _unreadable(path, exc) from exc
    finally:
        ledger.db.close()


def _unreadable(path: Path, exc: Exception) -> UsageError:
    why = "the file is empty" if path.stat().st_size == 0 else str(exc)
    return UsageError(f"{path} is not a readable datamill ledger ({why})")


def _summary(ledger: Ledger, dst: str, path: Path) -> list[str]:
    job = ledger.get_meta("job")
    if job is None:
        raise UsageError(f"{dst} is not a datamill job folder: its ledger {path} names no job "
                         "(no run of a job got as far as starting)")
    counts = ledger.top_level_outcomes()
    gone = ledger.get_meta("gone", 0)
    unit = ledger.get_meta("unit", "item")
    lines = [f"{dst}: datamill {job} job",
             f"  {unit}s: ok {counts.get('ok', 0)}, filtered {counts.get('filtered', 0)}, "
             f"failed {counts.get('failed', 0)}"
             + (f", gone {gone} (in earlier runs' input, not in the last one's)" if gone else "")]
    failures = ledger.failure_classes()
    if failures:
        lines.append("  failures: " + ", ".join(f"{k} {v}" for k, v in failures.items()))
    filtered = ledger.filter_reasons()
    if filtered:
        lines.append("  filtered: " + ", ".join(f"{k} {v}" for k, v in filtered.items()))
    options = ledger.get_meta("options") or {}
    if options:
        lines.append("  options: " + ", ".join(f"{k}={v}" for k, v in options.items()))
    for run in ledger.runs():
        stats = json.loads(run["stats"]) if run["stats"] else {}
        when = dt.datetime.fromtimestamp(run["started"]).strftime("%Y-%m-%d %H:%M:%S")
        rate = stats.get("items_per_second")
        lines.append(f"  run {run['id']} {when}: {_run_status(run)}"
                     + (f", {stats.get('items', 0)} {unit}s in {stats.get('seconds', 0):.1f} s"
                        f" ({rate or 0:.1f}/s)" if stats else ""))
    return lines


def _run_status(run: dict) -> str:
    """A run's status; for one marked running, whether its process still is."""
    status, pid, host = run["status"], run.get("pid"), run.get("host")
    if status != "running" or pid is None:
        return status
    if host not in (None, socket.gethostname()):
        return f"running on host {host} (process {pid}), unless it died there"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"interrupted (process {pid} gone)"
    except PermissionError:
        pass  # alive, another user's
    return f"running (process {pid})"
