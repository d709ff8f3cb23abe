"""The ledger: a job's state in SQLite, written only by the driver, so a rerun resumes.

One row per item (key) with its outcome, attempts, error details, the source's size and
modification time (a changed source is redone) and the item's output records as JSON.
Writes are buffered and committed in batches so the ledger never slows the job down.
"""
from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS items (
    key TEXT PRIMARY KEY, stage TEXT, status TEXT, reason TEXT,
    error_type TEXT, message TEXT, traceback TEXT, attempts INTEGER,
    source TEXT, size INTEGER, mtime REAL, records TEXT, seconds REAL, run INTEGER, updated REAL
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY, started REAL, ended REAL, status TEXT, argv TEXT, stats TEXT
);
"""
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode  # one encoder, not one per record
_COLUMNS = ("key", "stage", "status", "reason", "error_type", "message", "traceback", "attempts",
            "source", "size", "mtime", "records", "seconds", "run", "updated")


@dataclass(slots=True)
class ItemState:
    status: str
    reason: str | None
    size: int | None
    mtime: float | None
    records: str | None

    def same_source(self, size: int | None, mtime: float | None) -> bool:
        return self.size == size and self.mtime == mtime


class Ledger:
    """`Ledger(DST/_datamill/state.sqlite)`; see DESIGN.md for what it records and why."""

    def __init__(self, path: str | Path, flush_rows: int = 5000, flush_seconds: float = 1.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        self._buffer: list[tuple] = []
        self._flush_rows = flush_rows
        self._flush_seconds = flush_seconds
        self._last_flush = time.monotonic()
        # Tasks are numbered across runs (they may name shards); saved with every flush, so
        # a task whose results are in the ledger always has a smaller id.
        self.next_task_id: int = self.get_meta("next_task_id", 0)

    @classmethod
    def open_existing(cls, path: str | Path) -> "Ledger":
        if not Path(path).is_file():
            raise FileNotFoundError(f"no datamill state at {path}")
        return cls(path)

    # -- meta ------------------------------------------------------------------------------
    def get_meta(self, name: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE name=?", (name,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_meta(self, name: str, value: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, json.dumps(value)))

    # -- items -------------------------------------------------------------------------------
    def lookup(self, keys: list[str]) -> dict[str, ItemState]:
        """The recorded state of each of `keys` that the ledger knows."""
        self.flush()
        found: dict[str, ItemState] = {}
        for i in range(0, len(keys), 900):  # SQLite's limit on bound parameters
            chunk = keys[i:i + 900]
            marks = ",".join("?" * len(chunk))
            for key, *state in self.db.execute(
                    f"SELECT key, status, reason, size, mtime, records FROM items WHERE key IN ({marks})",
                    chunk):
                found[key] = ItemState(*state)
        return found

    def record(self, key: str, stage: str, status: str, reason: str | None = None, *,
               error_type: str | None = None, message: str | None = None,
               traceback: str | None = None, attempts: int = 1, source: str | None = None,
               size: int | None = None, mtime: float | None = None, records: Any = None,
               seconds: float = 0.0, run: int = 0) -> None:
        rec = None if records is None else _ENCODE(records)
        self._buffer.append((key, stage, status, reason, error_type, message, traceback, attempts,
                             source, size, mtime, rec, seconds, run, time.time()))
        if (len(self._buffer) >= self._flush_rows
                or time.monotonic() - self._last_flush > self._flush_seconds):
            self.flush()

    def flush(self) -> None:
        if self._buffer:
            with self.db:
                self.db.execute("BEGIN")
                self.db.executemany(
                    f"INSERT OR REPLACE INTO items VALUES ({','.join('?' * len(_COLUMNS))})",
                    self._buffer)
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('next_task_id', ?)",
                                (str(self.next_task_id),))
            self._buffer.clear()
        self._last_flush = time.monotonic()

    def forget(self, keys: Iterable[str]) -> None:
        """Drop items so that the next run does them again."""
        self.flush()
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany("DELETE FROM items WHERE key=?", [(k,) for k in keys])

    def clear(self) -> None:
        self.flush()
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("DELETE FROM items")

    def iter_items(self, where: str = "", params: tuple = ()) -> Iterator[dict]:
        """Every item row as a dict, in key order (streamed, constant memory)."""
        self.flush()
        cur = self.db.cursor()
        cur.execute(f"SELECT {','.join(_COLUMNS)} FROM items {where} ORDER BY key", params)
        while True:
            rows = cur.fetchmany(2000)
            if not rows:
                return
            for row in rows:
                yield dict(zip(_COLUMNS, row))

    def counts(self) -> dict[str, int]:
        self.flush()
        return dict(self.db.execute("SELECT status, COUNT(*) FROM items GROUP BY status"))

    def failure_classes(self) -> dict[str, int]:
        self.flush()
        return dict(self.db.execute(
            "SELECT reason, COUNT(*) FROM items WHERE status='failed' GROUP BY reason "
            "ORDER BY COUNT(*) DESC"))

    def filter_reasons(self) -> dict[str, int]:
        self.flush()
        return dict(self.db.execute(
            "SELECT reason, COUNT(*) FROM items WHERE status='filtered' GROUP BY reason "
            "ORDER BY COUNT(*) DESC"))

    # -- runs --------------------------------------------------------------------------------
    def begin_run(self, argv: list[str]) -> int:
        cur = self.db.execute("INSERT INTO runs (started, status, argv) VALUES (?, 'running', ?)",
                              (time.time(), json.dumps(argv)))
        return int(cur.lastrowid)

    def end_run(self, run: int, status: str, stats: dict) -> None:
        self.flush()
        self.db.execute("UPDATE runs SET ended=?, status=?, stats=? WHERE id=?",
                        (time.time(), status, json.dumps(stats), run))

    def runs(self) -> list[dict]:
        cols = ("id", "started", "ended", "status", "argv", "stats")
        return [dict(zip(cols, r)) for r in self.db.execute(f"SELECT {','.join(cols)} FROM runs ORDER BY id")]

    def close(self) -> None:
        self.flush()
        self.db.close()
