"""Which records of which parts make each shard of a `map` job (pure bookkeeping).

Workers write each task's records as a *part* (`_datamill/parts/000012.parquet` and its
sidecar `000012.json`: record count, sizes, schema, and for each item its input position
`seq`, key, first record and record count).  The driver feeds the parts' records, as
slices `(task, start, end)`, to a `Builder` that cuts them into shards of exactly
`shard_size` records (or the first record that reaches `shard_bytes`); the last shard of a
completed run takes what is left (`partial`).  A shard that is one whole part is linked
into place; any other is merged by a worker (jobs/map/worker.py).

Unordered, the records go in as parts commit, and a part that fills a shard on its own
becomes one at once.  Ordered, they go in by `seq` (an item's records once it and every
item before it have ended), so the shards are the same whatever the worker count; items
done after the cursor has passed them (retried in a later run) go in where it stands.

Resume: shards planned in full keep their slices in the ledger; the records of the live
parts that are in no full shard are fed again, in the same order (so an interrupted
ordered run writes the same bytes).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable


@dataclass
class Part:
    """A committed part: the sidecar's content, and how much of it full shards hold."""

    task: int
    path: str  # relative to DST
    meta: str  # the sidecar, relative to DST
    records: int
    bytes: int
    sha256: str
    schema: dict
    sizes: list[int] | None  # per record, with shard_bytes
    items: list[list]  # [seq, key, start, n]
    linkable: bool = True  # written with the job's schema (a shard of it may be this file)
    planned: int = 0  # records in full shards
    refs: int = 0  # shards not yet committed that read it

    @classmethod
    def from_sidecar(cls, task: int, path: str, meta: str, side: dict) -> "Part":
        return cls(task, path, meta, side["records"], side["bytes"], side["sha256"],
                   side["schema"], side.get("sizes"), side["items"])


@dataclass
class Shard:
    index: int
    slices: list[list[int]]  # [task, start, end]
    records: int
    partial: bool = False
    link: bool = False  # one whole part: the shard is that file
    cursor: int = 0  # ordered: every item before this seq was fed when it was cut
    state: str = "planned"  # planned | done
    bytes: int = 0
    sha256: str = ""

    def to_state(self) -> dict:
        return {"slices": self.slices, "records": self.records, "partial": self.partial,
                "link": self.link, "cursor": self.cursor, "state": self.state,
                "bytes": self.bytes, "sha256": self.sha256}

    @classmethod
    def from_state(cls, index: int, s: dict) -> "Shard":
        return cls(index, s["slices"], s["records"], s["partial"], s["link"], s["cursor"],
                   s["state"], s["bytes"], s["sha256"])


class Builder:
    """Cuts a stream of record slices into shards of `shard_size` records, or fewer when
    their records reach `shard_bytes` (the record that reaches it is the shard's last)."""

    def __init__(self, shard_size: int, shard_bytes: int | None):
        self.size, self.max_bytes = shard_size, shard_bytes
        self.slices: list[list[int]] = []
        self.count = 0
        self.nbytes = 0

    def feed(self, part: Part, start: int, end: int) -> list[list[list[int]]]:
        """Add records [start, end) of `part`; the slices of every shard this completes."""
        done = []
        while start < end:
            if self.max_bytes is None:
                take = min(end - start, self.size - self.count)
                full = self.count + take == self.size
            else:
                take, full = 0, False
                sizes = part.sizes or []
                while start + take < end and not full:
                    self.nbytes += sizes[start + take] if start + take < len(sizes) else 0
                    take += 1
                    full = self.count + take == self.size or self.nbytes >= self.max_bytes
            self._append(part.task, start, start + take)
            self.count += take
            start += take
            if full:
                done.append(self.take())
        return done

    def fills_exactly(self, part: Part) -> bool:
        """Whether `part` alone is exactly one shard."""
        if self.max_bytes is None:
            return part.records == self.size
        total = 0
        sizes = part.sizes or []
        for i in range(part.records):
            total += sizes[i] if i < len(sizes) else 0
            if i + 1 == self.size or total >= self.max_bytes:
                return i + 1 == part.records
        return False

    def _append(self, task: int, start: int, end: int) -> None:
        last = self.slices[-1] if self.slices else None
        if last is not None and last[0] == task and last[2] == start:
            last[2] = end
        else:
            self.slices.append([task, start, end])

    def take(self) -> list[list[int]]:
        slices, self.slices, self.count, self.nbytes = self.slices, [], 0, 0
        return slices


@dataclass
class Assembler:
    shard_size: int
    shard_bytes: int | None
    ordered: bool
    parts: dict[int, Part] = field(default_factory=dict)
    shards: dict[int, Shard] = field(default_factory=dict)
    cursor: int = 0  # ordered: the next seq to feed
    resolved: dict[int, bool] = field(default_factory=dict)  # seq -> it has records
    located: dict[int, list[tuple[int, int, int]]] = field(default_factory=dict)  # seq -> slices

    def __post_init__(self) -> None:
        self.builder = Builder(self.shard_size, self.shard_bytes)
        self._new: list[Shard] = []
        self.partial: Shard | None = None  # the last shard of an earlier run, kept as it is
        self.dissolved: list[Shard] = []  # ...until new records come: then cut again

    @property
    def next_index(self) -> int:
        return max(self.shards, default=-1) + 1

    # -- resume ----------------------------------------------------------------------------
    def restore(self, parts: Iterable[Part], shards: Iterable[Shard]) -> list[Shard]:
        """The state of earlier runs: their live parts and full shards (partial ones were
        removed).  The records of the parts in no full shard are fed again, in order; returns
        the shards that completes (parts whose commit was the last thing a run did)."""
        self._new = []
        self.parts = {p.task: p for p in parts}
        self.shards = {s.index: s for s in shards}
        used: dict[int, list[tuple[int, int]]] = {}
        for s in self.shards.values():
            self.cursor = max(self.cursor, s.cursor)
            if s.partial:
                self.partial = s
            for task, start, end in s.slices:
                used.setdefault(task, []).append((start, end))
                part = self.parts.get(task)
                if part is not None:
                    part.planned += 0 if s.partial else end - start
                    part.refs += s.state != "done"
        backlog: list[tuple[int, int, int, int]] = []  # (seq, task, start, end)
        for part in sorted(self.parts.values(), key=lambda p: p.task):
            free = _complement(sorted(used.get(part.task, [])), part.records)
            if not self.ordered:
                for start, end in free:
                    self._feed((part, start, end))
                continue
            for seq, _key, start, n in part.items:
                for a, b in free:
                    lo, hi = max(a, start), min(b, start + n)
                    if lo < hi:
                        backlog.append((seq, part.task, lo, hi))
        for seq, task, lo, hi in sorted(backlog):
            if seq < self.cursor:
                self._feed((self.parts[task], lo, hi))
            else:
                self.located.setdefault(seq, []).append((task, lo, hi))
                self.resolved[seq] = True
        return self._take_new()

    # -- as the run goes -------------------------------------------------------------------
    def add_part(self, part: Part) -> list[Shard]:
        """A task's part committed: the shards it completes."""
        self.parts[part.task] = part
        self._new = []
        if not self.ordered:
            if part.linkable and self.builder.fills_exactly(part):
                self._reopen()
                self._emit([[part.task, 0, part.records]])
            else:
                self._feed((part, 0, part.records))
            return self._take_new()
        for seq, _key, start, n in part.items:
            if seq < self.cursor:  # done after the cursor passed it: goes in where it stands
                self._feed((part, start, start + n))
            else:
                self.located.setdefault(seq, []).append((part.task, start, start + n))
        self._advance()
        return self._take_new()

    def item_ended(self, seq: int, has_records: bool) -> list[Shard]:
        """Ordered: the item at `seq` ended (with records in a part, or none)."""
        self._new = []
        if seq >= self.cursor:
            self.resolved[seq] = has_records or self.resolved.get(seq, False)
            self._advance()
        return self._take_new()

    def end(self) -> list[Shard]:
        """The run completed: everything left, in order, and the last (partial) shard."""
        self._new = []
        for seq in sorted(self.located):
            for task, start, end in self.located.pop(seq):
                self._feed((self.parts[task], start, end))
            self.cursor = max(self.cursor, seq + 1)
        self.resolved.clear()
        if self.builder.slices:
            self._emit(self.builder.take(), partial=True)
        return self._take_new()

    def reject(self, part: Part) -> None:
        """A part that cannot be used (its schema conflicts): its items have no records."""
        self.parts.pop(part.task, None)
        for seq, *_ in part.items:
            self.located.pop(seq, None)
            if seq in self.resolved:
                self.resolved[seq] = False
        self._new = []
        self._advance()

    def _advance(self) -> None:
        while self.cursor in self.resolved:
            has = self.resolved[self.cursor]
            if has and self.cursor not in self.located:
                return  # its part has not committed yet
            del self.resolved[self.cursor]
            for task, start, end in self.located.pop(self.cursor, ()):
                self._feed((self.parts[task], start, end))
            self.cursor += 1

    def _feed(self, args: tuple[Part, int, int]) -> None:
        """Records [start, end) of a part go into the shards; the first new records of a run
        reopen the last shard of the earlier one (its records come first)."""
        self._reopen()
        self._cut(self.builder.feed(*args))

    def _reopen(self) -> None:
        if self.partial is not None:
            old, self.partial = self.partial, None
            del self.shards[old.index]
            self.dissolved.append(old)
            for task, start, end in old.slices:
                self._cut(self.builder.feed(self.parts[task], start, end))

    def _cut(self, done: list[list[list[int]]]) -> None:
        for slices in done:
            self._emit(slices)

    def _emit(self, slices: list[list[int]], partial: bool = False) -> None:
        records = sum(end - start for _, start, end in slices)
        link = False
        if len(slices) == 1:
            part = self.parts[slices[0][0]]
            link = part.linkable and slices[0][1] == 0 and slices[0][2] == part.records
        shard = Shard(self.next_index, slices, records, partial, link, self.cursor)
        self.shards[shard.index] = shard
        for task, start, end in slices:
            part = self.parts[task]
            part.refs += 1
            if not partial:
                part.planned += end - start
        self._new.append(shard)

    def _take_new(self) -> list[Shard]:
        new, self._new = self._new, []
        return new

    # -- after a shard is committed --------------------------------------------------------
    def shard_done(self, shard: Shard) -> list[Part]:
        """Shard `shard` is committed: the parts no shard needs any more."""
        shard.state = "done"
        free = []
        for task, _, _ in shard.slices:
            part = self.parts.get(task)
            if part is None:
                continue
            part.refs -= 1
            if part.refs == 0 and part.planned >= part.records:
                free.append(self.parts.pop(task))
        return free


def _complement(used: list[tuple[int, int]], n: int) -> list[tuple[int, int]]:
    """The ranges of [0, n) outside the sorted ranges `used`."""
    free, at = [], 0
    for start, end in used:
        if start > at:
            free.append((at, start))
        at = max(at, end)
    if at < n:
        free.append((at, n))
    return free
