"""Progress of a run: a tqdm bar on a terminal, plain periodic lines otherwise, or nothing."""
from __future__ import annotations

import sys
import time
from collections import Counter
from typing import Any, TextIO


class Progress:
    """Count outcomes as they come and show them (items, rate, the share that succeeded, MB/s
    when batch runners report bytes, ETA, failures so far and their top classes)."""

    def __init__(self, desc: str, *, total: int | None = None, quiet: bool = False,
                 interval: float = 10.0, stream: TextIO | None = None, unit: str = "item"):
        self.desc = desc
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.interval = interval
        self.unit = unit
        self.counts: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.done = 0
        self.skipped = 0  # done by earlier runs (they count toward the total, not the rate)
        self.total = total
        self.started = time.monotonic()
        self._last_show = self.started
        self._bar = None
        self._pending = 0
        self._in_flight = 0
        self._live: tuple[int, int, int] | None = None
        self.note: Any = None  # a function giving the job's own words ("1200 records, 3 shards")
        if not quiet and self.stream.isatty():
            from tqdm import tqdm
            tqdm.monitor_interval = 0  # no monitor thread: workers are forked from this process
            self._bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream,
                             dynamic_ncols=True, smoothing=0.1)
            self.interval = 0.2

    def update(self, status: str, reason: str | None = None, n: int = 1) -> None:
        self.done += n
        self._pending += n
        self.counts[status] += n
        if status == "failed":
            self.failures[reason or "error"] += n
        now = time.monotonic()
        if now - self._last_show >= self.interval:
            self._show(now)

    def skip(self, n: int = 1) -> None:
        """`n` items were done by an earlier run."""
        self.skipped += n
        if self._bar is not None:
            self._bar.update(n)

    def tick(self, in_flight_done: int = 0, live: tuple[int, int, int] | None = None) -> None:
        """Refresh the display if due; `in_flight_done` counts items finished inside tasks
        that are still running (shown, not yet counted as outcomes); `live` is (succeeded,
        not succeeded, bytes) as batch runners report them, running tasks included: when
        given, the success rate and MB/s come from it."""
        self._in_flight = in_flight_done
        self._live = live
        now = time.monotonic()
        if now - self._last_show >= self.interval:
            self._show(now)

    def set_total(self, total: int | None) -> None:
        self.total = total
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

    def _show(self, now: float) -> None:
        self._last_show = now
        if self.quiet:
            return
        running = f", {self._in_flight} more in running tasks" if self._in_flight else ""
        if self._bar is not None:
            self._bar.update(self._pending)
            self._pending = 0
            self._bar.set_postfix_str(self._volume_text(now) + self._failure_text() + running
                                      + self._note_text(), refresh=True)
            return
        done = self.done + self._in_flight
        rate = done / max(now - self.started, 1e-9)
        of = f"/{self.total}" if self.total else ""
        eta = ""
        if self.total and rate > 0:
            eta = f", ETA {_duration(max(0, self.total - self.skipped - done) / rate)}"
        before = f" ({self.skipped} by earlier runs)" if self.skipped else ""
        print(f"{self.desc}: {self.done + self.skipped}{of} {self.unit}s done{before}{running}, "
              f"{rate:.1f}/s{eta}, {self._volume_text(now)}{self._failure_text()}"
              f"{self._note_text()}", file=self.stream, flush=True)

    def _note_text(self) -> str:
        text = self.note() if self.note is not None else ""
        return f"; {text}" if text else ""

    def _volume_text(self, now: float) -> str:
        """MB/s (when batch runners report bytes) and the share of items that succeeded; ''
        before anything finished."""
        ok, done, nbytes = self.counts.get("ok", 0), self.done, 0
        if self._live is not None:
            ok, done, nbytes = self._live[0], self._live[0] + self._live[1], self._live[2]
        if not done:
            return ""
        mb = f"{nbytes / 1e6 / max(now - self.started, 1e-9):.1f} MB/s, " if nbytes else ""
        return f"{mb}{100 * ok / done:.1f}% ok; "

    def _failure_text(self) -> str:
        failed = self.counts.get("failed", 0)
        text = f"failed {failed}"
        if self.counts.get("filtered"):
            text = f"filtered {self.counts['filtered']}, " + text
        if failed:
            top = ", ".join(f"{k} {v}" for k, v in self.failures.most_common(3))
            text += f" ({top})"
        return text

    def close(self) -> None:
        if self._bar is not None:
            self._bar.update(self._pending)
            self._pending = 0
            self._bar.set_postfix_str(self._failure_text(), refresh=False)
            self._bar.close()
            self._bar = None


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
