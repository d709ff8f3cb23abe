"""Job `dedup`: find exact and near-duplicate images across a whole collection.

Items are the images of SRC; a worker hashes one image (perceptual hash, sha256, size) and
the ledger keeps the hashes, so a rerun hashes only new or changed images.  After the
per-item work, the driver groups every image against every other (exact copies by sha256,
near copies through a multi-index search on the perceptual hashes, union-find into groups),
keeps one image per group by the keep policy, and acts: a report only by default, or copy /
link the survivors, or move the duplicates away.  Changing the threshold, the keep policy or
the action regroups from the stored hashes, without rehashing.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..engine.atomic import atomic_path
from ..engine.errors import UsageError
from ..engine.job import Item
from ..engine.task import TaskContext, TaskRunner, failed_with, filtered, ok
from .tree import TreeJob
from ..media.hash_index import near_groups, pairs_against
from ..media.hashes import HASH_KINDS, hamming, hash_images, to_hex

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
KEEP_POLICIES = ("largest", "first", "oldest", "newest")
ACTIONS = ("report", "copy", "hardlink", "symlink", "move-duplicates")
DEFAULT_THRESHOLD = 6  # bench/dedup.py: the largest meeting P >= 0.99, R >= 0.95 (see BENCHMARKS.md)


@dataclass(frozen=True)
class DedupOptions:
    """Hashing options (change per-image results) and grouping options (a global phase)."""

    hash: str = "phash"
    fast: bool = False
    min_size: int | None = None
    min_bytes: int | None = None
    threshold: int = DEFAULT_THRESHOLD
    keep: str = "largest"
    action: str = "report"
    move_to: str | None = None
    report: str | None = "report.html"
    against: str | None = None

    def validate(self) -> None:
        if self.hash not in HASH_KINDS:
            raise UsageError(f"--hash must be one of {', '.join(HASH_KINDS)}")
        if not 0 <= self.threshold <= 32:
            raise UsageError("--threshold must be a Hamming distance between 0 and 32")
        if self.keep not in KEEP_POLICIES:
            raise UsageError(f"--keep must be one of {', '.join(KEEP_POLICIES)}")
        if self.action not in ACTIONS:
            raise UsageError(f"--action must be one of {', '.join(ACTIONS)}")
        if (self.action == "move-duplicates") != (self.move_to is not None):
            raise UsageError("--action move-duplicates needs a folder to move them to (--move-to DIR)")

    def fingerprint(self) -> dict:
        return {"hash": self.hash, "fast": self.fast, "min_size": self.min_size,
                "min_bytes": self.min_bytes}


def hash_batch(opts: DedupOptions, task: TaskContext, payloads: list[tuple[str, int]]) -> list[tuple]:
    """Run in a worker: hash a task's images together (their DCTs in one batch), filtering
    by size; each image that fails costs only itself, and `task.start` names the image being
    decoded, so a crash or a deadline also costs only that one."""
    results: list[tuple | None] = [None] * len(payloads)
    todo = []
    for i, (_, size) in enumerate(payloads):
        if opts.min_bytes is not None and size < opts.min_bytes:
            results[i] = filtered("too_small", f"{size} bytes < --min-bytes {opts.min_bytes}")
            task.advance(outcome=results[i][0])
        else:
            todo.append(i)

    def paths() -> Iterator[str]:
        for i in todo:
            task.start(i)
            yield payloads[i][0]

    for i, h in zip(todo, hash_images(paths(), (opts.hash,), fast=opts.fast)):
        if isinstance(h, BaseException):
            results[i] = failed_with(h)
        elif opts.min_size is not None and min(h.width, h.height) < opts.min_size:
            results[i] = filtered("too_small", f"{h.width}x{h.height}: short side < --min-size {opts.min_size}")
        else:
            results[i] = ok([{"hash": to_hex(h.hashes[opts.hash]), "sha256": h.sha256, "width": h.width,
                              "height": h.height, "bytes": h.bytes}])
        task.advance(outcome=results[i][0], nbytes=payloads[i][1])
    return results


@dataclass
class _Collection:
    """Every hashed image of the ledger, as arrays (one row per image, in key order)."""

    keys: list[str]
    sources: list[str]
    hashes: np.ndarray
    sha256: list[str]
    width: np.ndarray
    height: np.ndarray
    size: np.ndarray
    mtime: np.ndarray

    @classmethod
    def load(cls, ledger: Any) -> "_Collection":
        keys, sources, hashes, sha, w, h, b, mt = [], [], [], [], [], [], [], []
        for row in ledger.iter_items("WHERE status='ok'"):
            rec = json.loads(row["records"])[0]
            keys.append(row["key"])
            sources.append(row["source"])
            hashes.append(int(rec["hash"], 16))
            sha.append(rec["sha256"])
            w.append(rec["width"])
            h.append(rec["height"])
            b.append(rec["bytes"])
            mt.append(row["mtime"] or 0.0)
        return cls(keys, sources, np.array(hashes, dtype=np.uint64), sha, np.array(w, np.int64),
                   np.array(h, np.int64), np.array(b, np.int64), np.array(mt, np.float64))

    def __len__(self) -> int:
        return len(self.keys)


def group_images(c: _Collection, threshold: int) -> np.ndarray:
    """Group id per image: near copies (Hamming <= threshold), streamed into union-find so
    that memory stays bounded even when millions of hashes cluster.  Exact copies (same
    sha256) have the same hash, so they are grouped too."""
    return near_groups(c.hashes, threshold)


def choose_kept(c: _Collection, members: np.ndarray, policy: str) -> int:
    """The member a group keeps: largest (pixels, then bytes, then path order), first,
    oldest or newest (modification time, then path order)."""
    if policy == "largest":
        order = np.lexsort((members, -c.size[members], -(c.width[members] * c.height[members])))
    elif policy == "first":
        order = np.argsort(members, kind="stable")
    elif policy == "oldest":
        order = np.lexsort((members, c.mtime[members]))
    else:
        order = np.lexsort((members, -c.mtime[members]))
    return int(members[order[0]])


class DedupJob(TreeJob):
    name = "dedup"
    kind = "images"
    unit = "image"
    batch_size = None  # hashing one image takes milliseconds: let the engine batch,
    task_seconds = 0.1  # enough images per task (30-100) for the batched DCT to pay
    manifest_fields = [
        pa.field("hash", pa.string()), pa.field("sha256", pa.string()),
        pa.field("width", pa.int32()), pa.field("height", pa.int32()),
        pa.field("bytes", pa.int64()), pa.field("group", pa.int64()),
        pa.field("kept", pa.bool_()), pa.field("distance", pa.int32()),
        pa.field("duplicate_of", pa.string()),
    ]

    def __init__(self, src: str | os.PathLike, dst: str | os.PathLike,
                 options: DedupOptions | None = None,
                 extensions: tuple[str, ...] = IMAGE_EXTENSIONS):
        super().__init__(src, dst, options or DedupOptions(), extensions)
        self.result: dict[str, Any] = {}

    def validate(self) -> None:
        if self.dst.is_remote and self.opts.action in ("hardlink", "symlink"):
            raise UsageError(f"--action {self.opts.action} needs a local DST: an object store "
                             f"({self.dst}) has no links; use --action copy")
        if self.dst.is_remote and self.opts.action == "move-duplicates":
            raise UsageError("--action move-duplicates needs a local DST: its log DST/moved.jsonl "
                             f"grows as files move, which an object store ({self.dst}) cannot do")
        super().validate()
        if self.opts.move_to is not None:
            move_to = Path(self.opts.move_to).resolve()
            if move_to == self.src.resolve() or self.src.resolve() in move_to.parents:
                raise UsageError("--move-to must be outside SRC")
        if self.opts.against is not None and not Path(self.opts.against).is_dir():
            raise UsageError(f"--against must be a folder of images or a dedup DST: {self.opts.against}")

    def items(self) -> Iterator[Item]:
        for e in self.files():
            yield Item(e.rel, (e.path, e.size), source=e.path, size=e.size, mtime=e.mtime)

    def runner(self) -> TaskRunner:
        return TaskRunner(batch_fn=functools.partial(hash_batch, self.opts))

    # -- the global phase ---------------------------------------------------------------------
    def finish(self, ledger: Any, quiet: bool) -> None:
        c = _Collection.load(ledger)
        groups = group_images(c, self.opts.threshold) if len(c) else np.zeros(0, np.int64)
        kept_of = np.arange(len(c))
        sizes = np.bincount(groups, minlength=len(c)) if len(c) else np.zeros(0, np.int64)
        order = np.argsort(groups, kind="stable")
        bounds = np.flatnonzero(np.diff(groups[order])) + 1 if len(c) else np.zeros(0, np.int64)
        for members in np.split(order, bounds) if len(c) else []:
            if len(members) > 1:
                kept_of[members] = choose_kept(c, members, self.opts.keep)
        distance = hamming(c.hashes, c.hashes[kept_of]).astype(np.int64) if len(c) else kept_of
        reference = self._against(c, quiet) if self.opts.against else {}
        self._record_outcomes(ledger, c, groups, sizes, kept_of, distance, reference)
        self._write_groups(c, groups, sizes, kept_of, distance)
        dup = (kept_of != np.arange(len(c))) | np.isin(np.arange(len(c)), list(reference))
        self.result = {"images": len(c), "groups": int((sizes > 1).sum()),
                       "duplicates": int(dup.sum()), "against": len(reference),
                       "exact": int(len(c) - len(set(c.sha256)))}
        self._act(c, dup, quiet)
        if self.opts.report:
            self._write_report(c, groups, sizes, kept_of, distance)

    def _against(self, c: _Collection, quiet: bool) -> dict[int, tuple[str, int]]:
        """Images of SRC within the threshold of a reference image: index -> (ref path, dist)."""
        from ..engine.ledger import Ledger
        from ..engine.run import RunOptions, run_job, state_path
        ref = Path(self.opts.against)
        if not state_path(ref).is_file():  # a folder of images: hash it through the engine
            ref_dst = self.state_dir / "against"
            run_job(DedupJob(ref, ref_dst, dataclasses.replace(self.opts, against=None, report=None,
                                                               action="report", move_to=None)),
                    RunOptions(quiet=True))
            ref = ref_dst
        ref_ledger = Ledger.open_existing(state_path(ref))
        try:
            r = _Collection.load(ref_ledger)
        finally:
            ref_ledger.close()
        qi, rj, dist = pairs_against(c.hashes, r.hashes, self.opts.threshold)
        found: dict[int, tuple[str, int]] = {}
        for q, j, d in zip(qi.tolist(), rj.tolist(), dist.tolist()):
            if q not in found or d < found[q][1]:
                found[q] = (r.sources[j], d)
        return found

    def _record_outcomes(self, ledger: Any, c: _Collection, groups: np.ndarray, sizes: np.ndarray,
                         kept_of: np.ndarray, distance: np.ndarray,
                         reference: dict[int, tuple[str, int]]) -> None:
        """Mark each image in its ledger records: a kept or unique image stays ok, a duplicate
        is filtered with reason duplicate (this is redone from the hashes on every run)."""
        updates = []
        for idx, key in enumerate(c.keys):
            rec = {"hash": to_hex(int(c.hashes[idx])), "sha256": c.sha256[idx],
                   "width": int(c.width[idx]), "height": int(c.height[idx]),
                   "bytes": int(c.size[idx])}
            if sizes[groups[idx]] > 1:
                rec.update(group=int(groups[idx]), kept=bool(kept_of[idx] == idx),
                           distance=int(distance[idx]))
                if kept_of[idx] != idx:
                    rec.update(status="filtered", reason="duplicate",
                               duplicate_of=c.keys[kept_of[idx]])
            if idx in reference:
                rec.update(status="filtered", reason="duplicate_of_reference",
                           duplicate_of=reference[idx][0], distance=reference[idx][1])
            updates.append((json.dumps([rec], separators=(",", ":")), key))
        with ledger.db:
            ledger.db.execute("BEGIN")
            ledger.db.executemany("UPDATE items SET records=? WHERE key=?", updates)

    def _write_groups(self, c: _Collection, groups: np.ndarray, sizes: np.ndarray,
                      kept_of: np.ndarray, distance: np.ndarray) -> None:
        idx = np.flatnonzero(sizes[groups] > 1) if len(c) else np.zeros(0, np.int64)
        idx = idx[np.lexsort((idx, groups[idx]))]
        table = pa.table({
            "group": pa.array(groups[idx], pa.int64()),
            "path": pa.array([c.keys[i] for i in idx], pa.string()),
            "kept": pa.array(kept_of[idx] == idx, pa.bool_()),
            "distance": pa.array(distance[idx], pa.int32()),
            "hash": pa.array([to_hex(int(c.hashes[i])) for i in idx], pa.string()),
            "sha256": pa.array([c.sha256[i] for i in idx], pa.string()),
            "width": pa.array(c.width[idx], pa.int32()),
            "height": pa.array(c.height[idx], pa.int32()),
            "bytes": pa.array(c.size[idx], pa.int64()),
        })
        with self.dst.atomic_path("groups.parquet") as tmp:
            pq.write_table(table, tmp)

    def _act(self, c: _Collection, dup: np.ndarray, quiet: bool) -> None:
        action = self.opts.action
        if action == "report":
            return
        say = (lambda *a: None) if quiet else print
        if action == "move-duplicates":
            target = Path(self.opts.move_to)
            moving = np.flatnonzero(dup)
            say(f"moving {len(moving)} duplicates ({int(c.size[moving].sum()) / 1e6:.1f} MB) to "
                f"{target}; the kept copy of each stays in SRC; log: {self.dst.child('moved.jsonl')}")
            with open(self.dst.path / "moved.jsonl", "a", encoding="utf-8") as log:
                for i in moving:
                    src = Path(c.sources[i])
                    if not src.exists():
                        continue
                    dest = target / c.keys[i]
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.move(src, dest)
                    log.write(json.dumps({"from": str(src), "to": str(dest)}) + "\n")
            return
        if self.dst.is_remote:  # copy: upload the survivors not uploaded yet
            there = self.dst.files()
            self.dst.upload_many((c.sources[i], c.keys[i]) for i in np.flatnonzero(~dup)
                                 if c.keys[i] not in there)
            return
        place = {"copy": shutil.copy2, "hardlink": os.link,
                 "symlink": lambda s, d: os.symlink(os.path.abspath(s), d)}[action]
        for i in np.flatnonzero(~dup):
            dest = self.dst.path / c.keys[i]
            if dest.exists() or dest.is_symlink():
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            if action == "copy":
                with atomic_path(dest) as tmp:
                    shutil.copy2(c.sources[i], tmp)
            else:
                place(c.sources[i], dest)

    def _write_report(self, c: _Collection, groups: np.ndarray, sizes: np.ndarray,
                      kept_of: np.ndarray, distance: np.ndarray) -> None:
        from ..io.report import ReportGroup, ReportMember, write_dedup_report
        idx = np.flatnonzero(sizes[groups] > 1) if len(c) else np.zeros(0, np.int64)
        idx = idx[np.lexsort((idx, groups[idx]))]

        def report_groups() -> Iterator[ReportGroup]:
            bounds = np.flatnonzero(np.diff(groups[idx])) + 1
            for members in np.split(idx, bounds) if len(idx) else []:
                members = sorted(members.tolist(), key=lambda i: (kept_of[i] != i, i))
                yield ReportGroup(int(groups[members[0]]), [ReportMember(
                    path=c.keys[i], source_path=c.sources[i], kept=bool(kept_of[i] == i),
                    distance=int(distance[i]), width=int(c.width[i]), height=int(c.height[i]),
                    bytes=int(c.size[i]), phash_hex=to_hex(int(c.hashes[i]))) for i in members])

        path = Path(self.opts.report)
        with contextlib.nullcontext(Path()) if path.is_absolute() else self.dst.staged() as root:
            write_dedup_report(root / path, report_groups(), title=f"datamill dedup: {self.src}",
                               summary={**self.result, "threshold": self.opts.threshold,
                                        "hash": self.opts.hash, "keep": self.opts.keep})

    def summary_lines(self, ledger: Any) -> list[str]:
        if not self.result:
            return []
        r = self.result
        lines = [f"images: {r['images']} hashed; {r['groups']} groups of duplicates "
                 f"({r['exact']} exact copies); {r['duplicates']} duplicates, "
                 f"{r['images'] - r['duplicates']} kept (threshold {self.opts.threshold}, "
                 f"keep {self.opts.keep})"]
        if self.opts.against:
            lines.append(f"against {self.opts.against}: {r['against']} images duplicate it")
        lines.append(f"groups: {self.dst.child('groups.parquet')}"
                     + (f"; report: {self.dst.child(self.opts.report)}" if self.opts.report else ""))
        lines += self.walk_lines()
        return lines


def dedup(src: str | os.PathLike, dst: str | os.PathLike, *, hash: str = "phash",
          fast: bool = False, threshold: int = DEFAULT_THRESHOLD, keep: str = "largest",
          action: str = "report", move_to: str | None = None, report: str | None = "report.html",
          min_size: int | None = None, min_bytes: int | None = None, against: str | None = None,
          extensions: tuple[str, ...] = IMAGE_EXTENSIONS, **engine: Any):
    """Find exact and near-duplicate images under `src`; results, report and ledger in `dst`.

    >>> report = datamill.dedup("photos/", "dedup-out/", threshold=8, action="report")  # doctest: +SKIP
    """
    from ..engine.run import RunOptions, run_job
    opts = DedupOptions(hash=hash, fast=fast, threshold=threshold, keep=keep, action=action,
                        move_to=move_to, report=report, min_size=min_size, min_bytes=min_bytes,
                        against=against)
    return run_job(DedupJob(src, dst, opts, tuple(extensions)), RunOptions(**engine))
