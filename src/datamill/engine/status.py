"""`datamill status DST`: summarise any job folder from its ledger, running nothing."""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from .errors import UsageError
from .ledger import Ledger
from .run import state_path


def describe(dst: str | Path) -> str:
    dst = Path(dst)
    path = state_path(dst)
    if not path.is_file():
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
