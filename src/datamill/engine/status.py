"""`datamill status DST`: summarise any job folder from its ledger, running nothing."""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from .errors import UsageError
from .ledger import Ledger
from .run import state_path
from .storage import Dst


def describe(dst: str | Path, state_dir: str | Path | None = None) -> str:
    """The summary of the job in `dst` (a folder or a URL) from its ledger; a URL's ledger
    is in `state_dir` or its default state folder."""
    out = Dst(dst)
    dst = out.location
    path = state_path(out, state_dir)
    if not path.is_file():
        if out.is_remote or state_dir is not None:
            raise UsageError(f"no datamill ledger for {dst} in {path.parent} (the ledger of a "
                             "job stays on the machine that ran it; give its --state-dir)")
        raise UsageError(f"{dst} is not a datamill job folder (no {path.relative_to(dst)})")
    ledger = Ledger.open_existing(path)
    try:
        counts = ledger.counts()
        lines = [f"{dst}: datamill {ledger.get_meta('job')} job",
                 f"  items: ok {counts.get('ok', 0)}, filtered {counts.get('filtered', 0)}, "
                 f"failed {counts.get('failed', 0)}"]
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
            lines.append(f"  run {run['id']} {when}: {run['status']}"
                         + (f", {stats.get('items', 0)} items in {stats.get('seconds', 0):.1f} s"
                            f" ({rate or 0:.1f}/s)" if stats else ""))
        return "\n".join(lines)
    finally:
        ledger.close()
