"""The ledger: a job's state in SQLite, written only by the driver, so a rerun resumes.

One row per item (key) with its outcome, attempts, error details, the source's size and
modification time (a changed source is redone) and the item's output records as JSON.
Writes are buffered and committed in batches so the ledger never slows the job down.

It also holds what datamill may touch in DST, and nothing else may be touched:

- `outputs`: every file or folder a task will write, recorded as *pending* (durably, before
  the task runs) and *committed* in the same transaction as the task's item outcomes.  A run
  removes the pending outputs of earlier runs by path; `--overwrite` removes every output.
- `moves`: files of the user's that a job moved (dedup --action move-duplicates), recorded
  before each move and marked done after; they stay the user's and are never deleted.
- `runs`: each run with its process id and host, so a run that died is recognised.
"""
from __future__ import annotations

import itertools
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from .fault import fault

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
CREATE TABLE IF NOT EXISTS outputs (
    path TEXT PRIMARY KEY, task INTEGER, state TEXT, run INTEGER
);
CREATE INDEX IF NOT EXISTS outputs_task ON outputs (task);
CREATE TABLE IF NOT EXISTS moves (
    source TEXT PRIMARY KEY, dest TEXT, state TEXT, run INTEGER
);
CREATE TABLE IF NOT EXISTS job_state (
    kind TEXT, key TEXT, value TEXT, PRIMARY KEY (kind, key)
);
"""
# Columns added after the first release: (table, column, type); added to older ledgers.
_ADDED = (("items", "task", "INTEGER"), ("items", "parent", "TEXT"),
          ("runs", "pid", "INTEGER"), ("runs", "host", "TEXT"))
PENDING, COMMITTED = "pending", "committed"
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode  # one encoder, not one per record
_COLUMNS = ("key", "stage", "status", "reason", "error_type", "message", "traceback", "attempts",
            "source", "size", "mtime", "records", "seconds", "run", "updated", "task", "parent")


def decode_records(texts: list[str | None]) -> list[Any]:
    """The records column of many rows decoded at once (None where a row has none): one
    json call for the batch, as a call per row costs more than the decoding itself."""
    try:
        values = json.loads("[" + ",".join(t or "null" for t in texts) + "]")
        if len(values) == len(texts):
            return values
    except ValueError:
        pass
    return [json.loads(t) if t else None for t in texts]  # a bad row raises, naming itself


_WIDE = f"INSERT OR REPLACE INTO items VALUES ({','.join('?' * len(_COLUMNS))})"
_NARROW = ("INSERT OR REPLACE INTO items (key, stage, status, attempts, seconds, run, updated, "
           "task) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")


@dataclass(slots=True)
class ItemState:
    status: str
    reason: str | None
    size: int | None
    mtime: float | None
    records: str | None
    task: int | None = None

    def same_source(self, size: int | None, mtime: float | None) -> bool:
        return self.size == size and self.mtime == mtime


class Ledger:
    """`Ledger(DST/_datamill/state.sqlite)`; see DESIGN.md for what it records and why."""

    def __init__(self, path: str | Path, flush_rows: int = 5000, flush_seconds: float = 1.0,
                 readonly: bool = False):
        self.path = Path(path)
        self._buffer: list[tuple] = []
        self._commits: list[tuple[int]] = []  # tasks whose outputs commit with the buffer
        self._states: list[tuple[str, str, str | None]] = []  # job state written with them
        self._missing: set[tuple[str, str]] = set()  # (table, column) an old ledger lacks
        self._flush_rows = flush_rows
        self._flush_seconds = flush_seconds
        self._last_flush = time.monotonic()
        if readonly:  # --dry-run, status: nothing is created or changed
            # immutable: SQLite creates no -shm/-wal beside it; only a ledger whose run died
            # has a write-ahead log left to read, which needs them
            wal = Path(f"{self.path}-wal").exists()
            self.db = sqlite3.connect(f"file:{self.path.resolve()}?mode=ro"
                                      + ("" if wal else "&immutable=1"), uri=True,
                                      isolation_level=None, check_same_thread=False)
            self.next_task_id = self.get_meta("next_task_id", 0)
            self._missing = {(t, c) for t, c, _ in _ADDED
                             if c not in {r[1] for r in self.db.execute(f"PRAGMA table_info({t})")}}
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        for table, column, kind in _ADDED:
            have = {r[1] for r in self.db.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        self.db.execute("CREATE INDEX IF NOT EXISTS items_parent ON items (parent)")
        # Tasks are numbered across runs (they may name shards); saved with every flush, so
        # a task whose results are in the ledger always has a smaller id.
        self.next_task_id: int = self.get_meta("next_task_id", 0)

    @classmethod
    def open_existing(cls, path: str | Path) -> "Ledger":
        if not Path(path).is_file():
            raise FileNotFoundError(f"no datamill state at {path}")
        return cls(path)

    @classmethod
    def empty(cls) -> "Ledger":
        """A ledger in memory (what a job with no state folder yet looks like)."""
        return cls(":memory:")

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
                    f"SELECT {self._cols('items', ('key', 'status', 'reason', 'size', 'mtime', 'records', 'task'))} FROM items "
                    f"WHERE key IN ({marks})", chunk):
                found[key] = ItemState(*state)
        return found

    def record(self, key: str, stage: str, status: str, reason: str | None = None, *,
               error_type: str | None = None, message: str | None = None,
               traceback: str | None = None, attempts: int = 1, source: str | None = None,
               size: int | None = None, mtime: float | None = None, records: Any = None,
               seconds: float = 0.0, run: int = 0, task: int | None = None,
               parent: str | None = None) -> None:
        rec = None if records is None else _ENCODE(records)
        self._buffer.append((key, stage, status, reason, error_type, message, traceback, attempts,
                             source, size, mtime, rec, seconds, run, time.time(), task, parent))
        if (len(self._buffer) >= self._flush_rows
                or time.monotonic() - self._last_flush > self._flush_seconds):
            self.flush()

    def record_row(self, key: str, stage: str, status: str, reason: str | None,
                   error_type: str | None, message: str | None, traceback: str | None,
                   attempts: int, source: str | None, size: int | None, mtime: float | None,
                   records: Any, seconds: float, run: int, task: int | None,
                   parent: str | None) -> None:
        """`record` with every column given in order (the run loop's path, once per item).
        An item with nothing to say but its status (most items of a large job) is written
        with the narrow statement: half the time per row."""
        if (reason is None and records is None and source is None and size is None
                and mtime is None and parent is None and message is None):
            self._buffer.append((key, stage, status, attempts, seconds, run, time.time(), task))
        else:
            self._buffer.append((key, stage, status, reason, error_type, message, traceback,
                                 attempts, source, size, mtime,
                                 None if records is None else _ENCODE(records), seconds, run,
                                 time.time(), task, parent))
        if len(self._buffer) >= self._flush_rows:
            self.flush()
        elif time.monotonic() - self._last_flush > self._flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Write the buffered outcomes, and commit the outputs of their tasks, in one
        transaction: after a crash a task's outputs are committed exactly when its items are."""
        if self._buffer or self._commits or self._states:
            fault("ledger")
            with self.db:
                self.db.execute("BEGIN")
                for width, rows in itertools.groupby(self._buffer, len):  # in order
                    self.db.executemany(_WIDE if width == len(_COLUMNS) else _NARROW, rows)
                self.db.executemany(f"UPDATE outputs SET state='{COMMITTED}' WHERE task=?",
                                    self._commits)
                for kind, key, value in self._states:
                    if value is None:
                        self.db.execute("DELETE FROM job_state WHERE kind=? AND key=?",
                                        (kind, key))
                    else:
                        self.db.execute("INSERT OR REPLACE INTO job_state VALUES (?, ?, ?)",
                                        (kind, key, value))
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('next_task_id', ?)",
                                (str(self.next_task_id),))
            self._buffer.clear()
            self._commits.clear()
            self._states.clear()
        self._last_flush = time.monotonic()

    def children(self, parent: str) -> list[str]:
        """Keys of the items that followed from item `parent` (clip ranges of a video)."""
        self.flush()
        return [r[0] for r in self.db.execute("SELECT key FROM items WHERE parent=?", (parent,))]

    # -- outputs -----------------------------------------------------------------------------
    def add_pending(self, task: int, paths: Iterable[str], run: int) -> None:
        """Record, durably and before the task runs, the outputs task `task` will write
        (paths relative to DST).  Buffered outcomes are written in the same transaction."""
        self.flush()
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(f"INSERT OR REPLACE INTO outputs VALUES (?, ?, '{PENDING}', ?)",
                                [(p, task, run) for p in paths])
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('next_task_id', ?)",
                            (str(self.next_task_id),))

    def commit_task(self, task: int) -> None:
        """Commit task `task`'s outputs with the next flush of outcomes (buffered)."""
        self._commits.append((task,))

    def outputs(self, state: str | None = None, task: int | None = None) -> list[str]:
        """Paths of outputs (relative to DST), optionally only those in `state` or of `task`."""
        self.flush()
        where, params = [], []
        if state is not None:
            where.append("state=?")
            params.append(state)
        if task is not None:
            where.append("task=?")
            params.append(task)
        sql = "SELECT path FROM outputs" + (" WHERE " + " AND ".join(where) if where else "")
        return [r[0] for r in self.db.execute(sql + " ORDER BY path", params)]

    def output_state(self, path: str) -> str | None:
        row = self.db.execute("SELECT state FROM outputs WHERE path=?", (path,)).fetchone()
        return row[0] if row else None

    def add_outputs(self, paths: Iterable[str], run: int) -> None:
        """Record outputs written outside tasks (reports) as committed, at once."""
        self.flush()
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(f"INSERT OR IGNORE INTO outputs VALUES (?, NULL, '{COMMITTED}', ?)",
                                [(p, run) for p in paths])

    def drop_outputs(self, paths: Iterable[str]) -> None:
        """Forget outputs whose files were removed."""
        self.flush()
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany("DELETE FROM outputs WHERE path=?", [(p,) for p in paths])

    # -- a job's own state -------------------------------------------------------------------
    def put_state(self, kind: str, key: str, value: Any) -> None:
        """Record a job's own state (`value` JSON-serialisable, None removes it) with the next
        flush, in the same transaction as the outcomes and output commits buffered with it."""
        self._states.append((kind, key, None if value is None else _ENCODE(value)))

    def states(self, kind: str) -> dict[str, Any]:
        """The job state of `kind`, by key (in key order)."""
        self.flush()
        if not self.db.execute("SELECT 1 FROM sqlite_master WHERE name='job_state'").fetchone():
            return {}  # an older ledger opened read-only
        return {k: json.loads(v) for k, v in self.db.execute(
            "SELECT key, value FROM job_state WHERE kind=? ORDER BY key", (kind,))}

    # -- moves of the user's files -----------------------------------------------------------
    def intend_move(self, source: str, dest: str, run: int) -> None:
        """Record, durably and before it happens, that `source` will be moved to `dest`."""
        self.db.execute("INSERT OR REPLACE INTO moves VALUES (?, ?, 'pending', ?)",
                        (source, dest, run))

    def done_move(self, source: str) -> None:
        self.db.execute("UPDATE moves SET state='done' WHERE source=?", (source,))

    def moves(self, state: str | None = None) -> list[tuple[str, str, str]]:
        """(source, dest, state) of every recorded move, or of those in `state`."""
        sql = "SELECT source, dest, state FROM moves"
        rows = self.db.execute(sql + (" WHERE state=?" if state else "") + " ORDER BY source",
                               (state,) if state else ())
        return [tuple(r) for r in rows]

    def forget_move(self, source: str) -> None:
        self.db.execute("DELETE FROM moves WHERE source=?", (source,))

    def update_outcomes(self, rows: Iterable[tuple]) -> None:
        """Rewrite the outcome of items already recorded, in one transaction (a global phase
        that judges items after their work: dedup's duplicates).  Each row: (key, stage,
        status, reason, error_type, message, traceback, records)."""
        self.flush()
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(
                "UPDATE items SET stage=?, status=?, reason=?, error_type=?, message=?, "
                "traceback=?, records=? WHERE key=?",
                [(*r[1:7], None if r[7] is None else _ENCODE(r[7]), r[0]) for r in rows])

    def count_failed_with_source(self) -> int:
        """Failed items that name their source (download: the failed URLs)."""
        self.flush()
        return self.db.execute("SELECT COUNT(*) FROM items WHERE status='failed' "
                               "AND source IS NOT NULL").fetchone()[0]

    def count_top_level(self) -> int:
        """How many items the input gave (not those that followed from them)."""
        self.flush()
        if ("items", "parent") in self._missing:
            return sum(self.counts().values())
        return self.db.execute("SELECT COUNT(*) FROM items WHERE parent IS NULL").fetchone()[0]

    def top_level_outcomes(self) -> dict[str, int]:
        """Counts by outcome of the items the input gave, each judged with the items that
        followed from it (a video with a failed clip range failed)."""
        self.flush()
        if ("items", "parent") in self._missing or self.db.execute(
                "SELECT NOT EXISTS (SELECT 1 FROM items WHERE parent IS NOT NULL)").fetchone()[0]:
            return self.counts()  # no item followed from another: each is its own outcome
        return dict(self.db.execute(
            "SELECT CASE WHEN p.status != 'ok' THEN p.status "
            "WHEN EXISTS (SELECT 1 FROM items c WHERE c.parent = p.key AND c.status = 'failed') "
            "THEN 'failed' "
            "WHEN EXISTS (SELECT 1 FROM items c WHERE c.parent = p.key AND c.status = 'filtered') "
            "THEN 'filtered' ELSE 'ok' END, COUNT(*) "
            "FROM items p WHERE p.parent IS NULL GROUP BY 1"))

    def forget(self, keys: Iterable[str]) -> None:
        """Drop items so that the next run does them again."""
        self.flush()
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany("DELETE FROM items WHERE key=?", [(k,) for k in keys])

    def clear(self) -> None:
        """Forget every item and output (the files must have been removed first)."""
        self.flush()
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("DELETE FROM items")
            self.db.execute("DELETE FROM outputs")
            self.db.execute("DELETE FROM job_state")
            self.db.execute("DELETE FROM meta WHERE name IN ('next_task_id', 'gone')")
        self.next_task_id = 0

    def iter_items(self, where: str = "", params: tuple = (),
                   columns: tuple[str, ...] = _COLUMNS) -> Iterator[dict]:
        """Every item row as a dict of `columns`, in key order (streamed, constant memory)."""
        for row in self.iter_rows(columns, where, params):
            yield dict(zip(columns, row))

    def iter_rows(self, columns: tuple[str, ...], where: str = "",
                  params: tuple = ()) -> Iterator[tuple]:
        """Every item row as a tuple of `columns`, in key order (streamed)."""
        self.flush()
        cur = self.db.cursor()
        cur.execute(f"SELECT {self._cols('items', columns)} FROM items {where} ORDER BY key", params)
        while True:
            rows = cur.fetchmany(5000)
            if not rows:
                return
            yield from rows

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
    def begin_run(self, argv: list[str], pid: int, host: str) -> int:
        cur = self.db.execute(
            "INSERT INTO runs (started, status, argv, pid, host) VALUES (?, 'running', ?, ?, ?)",
            (time.time(), json.dumps(argv), pid, host))
        return int(cur.lastrowid)

    def running_runs(self) -> list[tuple[int, int | None, str | None]]:
        """(id, pid, host) of runs still marked running."""
        return [tuple(r) for r in self.db.execute(
            "SELECT id, pid, host FROM runs WHERE status='running'")]

    def mark_run(self, run: int, status: str) -> None:
        self.db.execute("UPDATE runs SET status=?, ended=COALESCE(ended, ?) WHERE id=?",
                        (status, time.time(), run))

    def end_run(self, run: int, status: str, stats: dict) -> None:
        self.flush()
        self.db.execute("UPDATE runs SET ended=?, status=?, stats=? WHERE id=?",
                        (time.time(), status, json.dumps(stats), run))

    def runs(self) -> list[dict]:
        cols = ("id", "started", "ended", "status", "argv", "stats", "pid", "host")
        return [dict(zip(cols, r)) for r in self.db.execute(
            f"SELECT {self._cols('runs', cols)} FROM runs ORDER BY id")]

    def _cols(self, table: str, cols: Iterable[str]) -> str:
        """A select list; columns an older ledger opened read-only lacks read as NULL."""
        if not self._missing:
            return ",".join(cols)
        return ",".join(f"NULL AS {c}" if (table, c) in self._missing else c for c in cols)

    def close(self) -> None:
        self.flush()
        self.db.close()
