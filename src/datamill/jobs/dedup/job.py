"""Job `dedup`: find exact and near-duplicate images across a whole collection.

Items are the images of SRC; a worker hashes one image (perceptual hash, sha256, size) and
the ledger keeps the hashes, so a rerun hashes only new or changed images.  After the
per-item work, the driver groups every image against every other (exact copies by sha256,
near copies through a multi-index search on the perceptual hashes, union-find into groups),
keeps one image per group by the keep policy, and acts: a report only by default, or copy /
link the survivors, or move the duplicates away.  Changing the threshold, the keep policy or
the action regroups from the stored hashes, without rehashing.

Groups and actions are decided from the files present now.  An image hashed before and
deleted since is left out.  An image an earlier run moved to --move-to is grouped where it
is; the keep policy may keep it there, and then nothing of its group moves.  A duplicate
moves only while the image it duplicates (its group's kept image, in SRC, or the reference
file of --against) exists, so no run removes the last copy of an image from SRC.

Moved files stay the user's: each move is recorded in the ledger before it happens and
logged in DST/moved.jsonl after.  A move that a killed run never recorded as done is undone
by the next run, `--overwrite` puts every moved file back, and a name taken in --move-to is
never replaced (the file gets a free one: `photo.1.jpg`).  A survivor that cannot be copied
or linked, or a duplicate that cannot be moved, fails as its error class (stage `place`) and
is tried again by the next run.
"""
from __future__ import annotations

import contextlib
import dataclasses
import filecmp
import functools
import itertools
import json
import logging
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ...atomic import remove_output
from ...columns import column
from ...errors import UsageError
from ...engine.job import Item
from ...engine.task import (FAILED, FILTERED, OK, Outcome, TaskContext, TaskRunner, failed,
                            failed_with, filtered, ok)
from ...options import OptionError, Options, option, parse_extensions
from ..tree import TreeJob
from ...media.hash_index import pairs_against
from ...media.hashes import HASH_KINDS, hash_images, to_hex
from .place import disk_full, inside, is_placed, move_file, place_survivor
from .plan import PLACE, RECORD_KEYS, Collection, Plan, group_images, plan_groups
from .thumbs import SPOOL, THUMB_SIZE, ThumbSpool, ThumbTask, make_thumbs, thumb_tasks

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
KEEP_POLICIES = ("largest", "first", "oldest", "newest")
ACTIONS = ("report", "copy", "hardlink", "symlink", "move-duplicates")
DEFAULT_THRESHOLD = 6  # bench/dedup.py: the largest meeting P >= 0.99, R >= 0.95 (see BENCHMARKS.md)
MOVE_LOG = "moved.jsonl"
GROUPS = "groups.parquet"
REPORT_CHUNK = 50  # groups whose thumbnails are read from the spool in one query
log = logging.getLogger("datamill")


@dataclass(frozen=True)
class DedupOptions(Options):
    """Hashing options (change per-image results) and grouping options (a global phase)."""

    hash: str = option("phash", "Perceptual hash (phash is bit-for-bit imagehash's).",
                       choices=HASH_KINDS)
    fast: bool = option(False, "Decode JPEGs at reduced scale for hashing (faster; see the "
                        "README).")
    min_size: int | None = option(None, "Filter images whose short side is smaller "
                                  "(too_small).", min=1)
    min_bytes: int | None = option(None, "Filter files smaller than this (too_small).", min=0)
    threshold: int = option(DEFAULT_THRESHOLD, "Largest Hamming distance between near "
                            "duplicates (0: exact perceptual match).", min=0, max=32,
                            fingerprint=False)
    keep: str = option("largest", "Which image of a group is kept.", choices=KEEP_POLICIES,
                       fingerprint=False)
    action: str = option("report", "report: touch nothing; copy/hardlink/symlink the survivors "
                         "into DST; move the duplicates to --move-to.", choices=ACTIONS,
                         fingerprint=False)
    move_to: str | None = option(None, "Where --action move-duplicates puts them (mirroring "
                                 "SRC).", fingerprint=False)
    report: str | None = option("report.html", "HTML report of the groups (relative to DST).",
                                off_flag="--no-report", fingerprint=False)
    against: str | None = option(None, "Also drop images that duplicate this reference (a "
                                 "folder or a dedup DST).", fingerprint=False)
    extensions: tuple[str, ...] = option(
        IMAGE_EXTENSIONS, "Image extensions, comma-separated.", flag="--ext",
        parse=parse_extensions, multiple=True, fingerprint=False)

    def check(self) -> None:
        if self.action == "move-duplicates" and self.move_to is None:
            raise OptionError("--action move-duplicates needs a folder to move them to "
                              "(--move-to DIR)")
        if self.move_to is not None and self.action != "move-duplicates":
            raise OptionError(f"--move-to goes only with --action move-duplicates (the action "
                              f"is {self.action}); drop --move-to or use --action "
                              "move-duplicates")


def work(opts: DedupOptions, task: TaskContext, payloads: list) -> list[Outcome]:
    """Run in a worker: a task of images to hash, or a side task of thumbnails to make."""
    if len(payloads) == 1 and isinstance(payloads[0], ThumbTask):
        return [ok(make_thumbs(payloads[0]))]
    return hash_batch(opts, task, payloads)


def hash_batch(opts: DedupOptions, task: TaskContext, payloads: list[tuple[str, int]]) -> list[Outcome]:
    """Run in a worker: hash a task's images together (their DCTs in one batch), filtering
    by size; each image that fails costs only itself, and `task.start` names the image being
    decoded, so a crash or a deadline also costs only that one."""
    results: list[tuple | None] = [None] * len(payloads)
    todo = []
    for i, (_, size) in enumerate(payloads):
        if opts.min_bytes is not None and size < opts.min_bytes:
            results[i] = filtered("too_small", f"{size} bytes < --min-bytes {opts.min_bytes}")
            task.advance(outcome=results[i].status)
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
        task.advance(outcome=results[i].status, nbytes=payloads[i][1])
    return results


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
        pa.field("duplicate_of", pa.string()), pa.field("moved_to", pa.string()),
    ]

    def __init__(self, src: str | os.PathLike, dst: str | os.PathLike,
                 options: DedupOptions | None = None,
                 extensions: tuple[str, ...] = IMAGE_EXTENSIONS):
        super().__init__(src, dst, options or DedupOptions(), extensions)
        self.result: dict[str, Any] = {}
        # what at_end found (every hashed image, which are present, those, their groups),
        # reused by finish; and the report's thumbnails
        self._found: tuple[Collection, np.ndarray, Collection, np.ndarray] | None = None
        self._spool: ThumbSpool | None = None

    def validate(self) -> None:
        if self.dst.is_remote and self.opts.action in ("hardlink", "symlink"):
            raise UsageError(f"--action {self.opts.action} needs a local DST: an object store "
                             f"({self.dst}) has no links; use --action copy")
        if self.dst.is_remote and self.opts.action == "move-duplicates":
            raise UsageError("--action move-duplicates needs a local DST: its log DST/moved.jsonl "
                             f"grows as files move, which an object store ({self.dst}) cannot do")
        super().validate()
        src = self.src.resolve()
        move_to = Path(self.opts.move_to).resolve() if self.opts.move_to is not None else None
        if move_to is not None and (inside(move_to, src) or inside(src, move_to)):
            raise UsageError(f"--move-to must be outside SRC (and not hold it): {self.opts.move_to}")
        if self.opts.against is not None:
            self._check_against(src, move_to)
        self._check_report(src)

    def _check_against(self, src: Path, move_to: Path | None) -> None:
        """The reference must be another collection: one that holds SRC, DST or --move-to (or
        lies in one of them) would make images duplicates of themselves."""
        against = Path(self.opts.against)
        if not against.is_dir():
            raise UsageError(f"--against must be a folder of images or a dedup DST: {against}")
        ref = against.resolve()
        others = [("SRC", src), ("--move-to", move_to),
                  ("DST", None if self.dst.is_remote else self.dst.path.resolve())]
        for name, other in others:
            if other is not None and (inside(ref, other) or inside(other, ref)):
                raise UsageError(f"--against {against} overlaps {name} ({other}): its images "
                                 "would be duplicates of themselves; give a reference collection "
                                 "outside SRC, DST and --move-to")

    def _report_file(self) -> Path | None:
        """The report's local path (None: no report, or a remote DST's own)."""
        if not self.opts.report:
            return None
        path = Path(self.opts.report)
        if path.is_absolute():
            return path
        return None if self.dst.path is None else self.dst.path / path

    def _report_in_dst(self) -> str | None:
        """The report's path relative to DST when it is one of DST's files."""
        if not self.opts.report or Path(self.opts.report).is_absolute():
            return None
        rel = posixpath.normpath(Path(self.opts.report).as_posix())
        return None if rel == ".." or rel.startswith("../") else rel

    def _check_report(self, src: Path) -> None:
        """The report never lands in SRC, on DST's other files, or on a file that is no
        datamill report (outside DST the ledger cannot tell whose a file is)."""
        path = self._report_file()
        if path is None:
            return
        rel = self._report_in_dst()
        resolved = path.resolve()
        if inside(resolved, src):
            raise UsageError(f"--report {self.opts.report} is inside SRC {self.src}: it would "
                             "write over your files; give a name in DST or a path outside SRC")
        if resolved.is_dir():
            raise UsageError(f"--report {self.opts.report} is a folder; give a file name")
        if rel is not None and (rel.split("/")[0] == "_datamill" or rel in (
                GROUPS, MOVE_LOG, "manifest.parquet", "failures.jsonl", "stats.json")):
            raise UsageError(f"--report {self.opts.report} is the name of another file of DST")
        from ...io.dedup_report import is_dedup_report
        if rel is None and resolved.exists() and not is_dedup_report(resolved):
            raise UsageError(f"--report {self.opts.report} exists and is not a datamill report; "
                             "it is left alone: choose another path")

    def report_names(self) -> list[str]:
        rel = self._report_in_dst()
        return [GROUPS, MOVE_LOG] + ([rel] if rel else [])

    def items(self) -> Iterator[Item]:
        for e in self.files():
            yield self.item_for(e, (e.path, e.size))

    def runner(self) -> TaskRunner:
        return TaskRunner(batch_fn=functools.partial(work, self.opts))

    # -- after the hashing pass: the report's thumbnails, by the workers -----------------------
    def _find(self, ledger: Any) -> tuple[Collection, np.ndarray, Collection, np.ndarray]:
        """Every hashed image, which of them are present now, those, and their groups."""
        if self._found is None:
            everything = Collection.load(ledger)
            present = everything.locate({s: d for s, d, _ in ledger.moves("done")})
            c = everything.take(np.flatnonzero(present))
            groups = group_images(c, self.opts.threshold) if len(c) else np.zeros(0, np.int64)
            self._found = everything, present, c, groups
        return self._found

    def at_end(self, ledger: Any) -> list:
        """Every image is hashed: group them, and have the workers make the thumbnails of the
        images in groups that the spool lacks (see thumbs.py)."""
        if not self.opts.report or self._spool is not None:
            return []
        _, _, c, groups = self._find(ledger)
        self._spool = ThumbSpool(self.state_dir / SPOOL, THUMB_SIZE)
        grouped = np.flatnonzero(np.bincount(groups, minlength=len(c))[groups] > 1) if len(c) else []
        where: dict[str, str] = {}
        for i in grouped:
            where.setdefault(c.sha256[i], c.where[i])
        return thumb_tasks(((where[sha], sha) for sha in self._spool.missing(where)), THUMB_SIZE)

    def side_done(self, task_id: int, payload: Any, outcome: Any, ledger: Any) -> None:
        if outcome.status == OK:
            self._spool.put(outcome.records)
        else:  # its worker died twice (a decoder crash): drawn as a grey box that says so
            self._spool.failed((sha for _, sha in payload.images), f"no thumbnail: {outcome.message}")

    # -- the moves of earlier runs ------------------------------------------------------------
    def prepare(self, ledger: Any, overwrite: bool) -> None:
        """Settle the moves of earlier runs.  A move a killed run made but never recorded as
        done is undone (this run decides again from the files present); one that never
        happened is forgotten.  With `overwrite`, every moved file is put back where it came
        from, or left where it is when that path is taken again."""
        said: dict[str, list[Path]] = {}
        for source, dest, state in ledger.moves():
            if state == "done" and not overwrite:
                continue
            s, d = Path(source), Path(dest)
            if state == "pending" and os.path.lexists(s):  # it never happened
                if os.path.lexists(d) and filecmp.cmp(s, d, shallow=False):
                    d.unlink()  # the finished copy of a move across file systems
                ledger.forget_move(source)
                continue
            if not os.path.lexists(d):
                said.setdefault("are no longer where dedup moved them: nothing to put back",
                                []).append(d)
            elif os.path.lexists(s):
                said.setdefault("stay in --move-to: their place in SRC is taken", []).append(d)
            else:
                try:
                    s.parent.mkdir(parents=True, exist_ok=True)
                    move_file(d, s)
                except OSError as exc:  # still recorded: tried again by the next run
                    said.setdefault(f"could not be put back ({exc.strerror or exc})", []).append(d)
                    continue
                why = "--overwrite" if state == "done" else "a run stopped before recording it"
                with open(self.dst.path / MOVE_LOG, "a", encoding="utf-8") as move_log:
                    move_log.write(json.dumps({"from": dest, "to": source,
                                               "reason": f"put back: {why}"}) + "\n")
                said.setdefault(f"were put back into SRC ({why})", []).append(s)
            ledger.forget_move(source)
        for what, paths in said.items():
            log.warning("datamill dedup: %d moved files %s (e.g. %s)", len(paths), what, paths[0])

    # -- the global phase ---------------------------------------------------------------------
    def finish(self, ledger: Any, quiet: bool) -> None:
        everything, present, c, groups = self._find(ledger)
        plan = plan_groups(c, self.opts.threshold, self.opts.keep,
                           self._against(c) if self.opts.against else {}, groups)
        dup = ~plan.survives
        self.result = {"images": len(c), "gone": int((~present).sum()),
                       "groups": int((plan.sizes > 1).sum()), "duplicates": int(dup.sum()),
                       "against": len(plan.reference), "exact": int(len(c) - len(set(c.sha256))),
                       "kept_moved": int(sum(c.moved_to[i] is not None
                                             for i in np.flatnonzero(plan.survives)
                                             if plan.sizes[plan.groups[i]] > 1))}
        failures: dict[int, Outcome] = {}
        if self.opts.action == "move-duplicates":
            self._move_duplicates(ledger, c, plan, failures)
        elif self.opts.action != "report":
            self._place_survivors(ledger, c, plan, failures)
        self.result["failed"] = len(failures)
        if failures:
            i, e = next(iter(failures.items()))
            self.result["failed_example"] = f"{c.keys[i]}: {e}"
        self._record_outcomes(ledger, everything, present, c, plan, failures)
        self._write_groups(c, plan)
        if self.opts.report:
            self._write_report(c, plan)

    def _against(self, c: Collection) -> dict[int, tuple[str, int]]:
        """Images of SRC within the threshold of a reference image that exists now:
        index -> (reference file, distance)."""
        from ...engine.ledger import Ledger
        from ...engine.run import RunOptions, run_job
        from ...engine.dst import state_path
        ref = Path(self.opts.against)
        if not state_path(ref).is_file():  # a folder of images: hash it through the engine
            ref_dst = self.state_dir / "against"
            run_job(DedupJob(ref, ref_dst, dataclasses.replace(self.opts, against=None, report=None,
                                                               action="report", move_to=None)),
                    RunOptions(quiet=True))
            ref = ref_dst
        ref_ledger = Ledger(state_path(ref), readonly=True)  # another job's: only read
        try:
            r = Collection.load(ref_ledger)
            r = r.take(np.flatnonzero(r.locate({s: d for s, d, _ in ref_ledger.moves("done")})))
        finally:
            ref_ledger.close()
        qi, rj, dist = pairs_against(c.hashes, r.hashes, self.opts.threshold)
        src = self.src.resolve()
        found: dict[int, tuple[str, int]] = {}
        for q, j, d in zip(qi.tolist(), rj.tolist(), dist.tolist()):
            if inside(Path(r.where[j]).resolve(), src):
                raise UsageError(f"--against {self.opts.against} lists images of SRC (e.g. "
                                 f"{r.where[j]}): each would be a duplicate of itself; give a "
                                 "reference collection outside SRC")
            found[q] = (r.where[j], d)
        return found

    def _move_duplicates(self, ledger: Any, c: Collection, plan: Plan,
                         failures: dict[int, Outcome]) -> None:
        """Move the duplicates in SRC whose kept image (or reference file) is there now."""
        target = Path(os.path.abspath(self.opts.move_to))  # the ledger outlives the cwd
        taken = {dest for _, dest, _ in ledger.moves()}
        moved = before = held = nbytes = 0
        with open(self.dst.path / MOVE_LOG, "a", encoding="utf-8") as move_log:
            for i in np.flatnonzero(~plan.survives):
                if c.moved_to[i] is not None:
                    before += 1
                    continue
                if i in plan.reference:
                    original, reason = plan.reference[i][0], "duplicate_of_reference"
                else:  # kept in --move-to by this --keep: the group stays as it is
                    k = plan.kept_of[i]
                    original = c.where[k] if c.moved_to[k] is None else None
                    reason = "duplicate"
                if original is None or not os.path.exists(original):
                    held += 1
                    continue
                try:
                    dest = self._move_out(ledger, Path(c.where[i]), target / c.keys[i], taken)
                except OSError as exc:
                    if disk_full(exc):
                        raise  # the engine stops the job, naming the disk
                    failures[i] = failed_with(exc)
                    continue
                move_log.write(json.dumps({"from": c.where[i], "to": str(dest), "reason": reason,
                                           "duplicate_of": original}) + "\n")
                move_log.flush()
                ledger.done_move(c.sources[i])
                c.where[i] = c.moved_to[i] = str(dest)
                moved += 1
                nbytes += int(c.size[i])
        self.result.update(moved=moved, moved_bytes=nbytes, moved_before=before, held=held)

    def _move_out(self, ledger: Any, source: Path, dest: Path, taken: set[str]) -> Path:
        """Move `source` to `dest`, or to a free name beside it (`name.1.jpg`, ...) when that is
        taken or was given to an earlier move; recorded before and marked done by the caller."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        for n in itertools.count():
            cand = dest if n == 0 else dest.with_name(f"{dest.stem}.{n}{dest.suffix}")
            if str(cand) in taken or os.path.lexists(cand):
                continue
            taken.add(str(cand))
            ledger.intend_move(str(source), str(cand), self.run_id)
            try:
                move_file(source, cand)
            except FileExistsError:  # taken since the check: try the next name
                ledger.forget_move(str(source))
                continue
            except BaseException:
                if os.path.lexists(source) and not os.path.lexists(cand):
                    ledger.forget_move(str(source))
                raise
            return cand
        raise AssertionError("unreachable")

    def _place_survivors(self, ledger: Any, c: Collection, plan: Plan,
                         failures: dict[int, Outcome]) -> None:
        """Copy or link each survivor into DST (from where it is now).  A path taken by a file
        datamill did not write fails the survivor as dst_exists.  The copies of images that
        are still there but no longer survive (another --keep or --threshold) are removed;
        those of images deleted since stay (a hard link in DST may be the last copy)."""
        action, survivors = self.opts.action, np.flatnonzero(plan.survives)
        if self.dst.is_remote:  # copy: upload the survivors not uploaded yet
            there = self.dst.files()
            self.dst.upload_many((c.where[i], c.keys[i]) for i in survivors
                                 if c.keys[i] not in there)
            return
        ours = set(ledger.outputs())
        keep = {c.keys[i] for i in survivors}
        stale = [k for k in c.keys if k in ours and k not in keep]
        for key in stale:
            remove_output(self.dst.path / key)
        ledger.drop_outputs(stale)
        todo, already = [], 0
        for i in survivors:
            dest = self.dst.path / c.keys[i]
            if not os.path.lexists(dest):
                todo.append(i)
            elif c.keys[i] not in ours:
                failures[i] = failed("dst_exists", f"{dest} exists and was not written by "
                                     "datamill; it is left alone", type_="FileExistsError")
            elif is_placed(action, c.where[i], dest):
                already += 1
            else:  # ours, but of another action or an older version of the image
                remove_output(dest)
                todo.append(i)
        task = ledger.next_task_id
        ledger.next_task_id += 1
        ledger.add_pending(task, [c.keys[i] for i in todo], self.run_id)
        placed = copied_not_linked = 0
        for n, i in enumerate(todo):
            dest = self.dst.path / c.keys[i]
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                copied_not_linked += place_survivor(action, c.where[i], dest)
                placed += 1
            except OSError as exc:
                if disk_full(exc):  # the next run removes the pending ones and resumes
                    ledger.drop_outputs([c.keys[j] for j in todo[n:] if j not in failures])
                    raise
                failures[i] = failed_with(exc)
        ledger.drop_outputs([c.keys[i] for i in todo if i in failures])
        ledger.commit_task(task)
        ledger.flush()
        self.result.update(placed=placed, already=already, unplaced=len(stale),
                           copied_not_linked=copied_not_linked)

    def _record_outcomes(self, ledger: Any, everything: Collection, present: np.ndarray,
                         c: Collection, plan: Plan, failures: dict[int, Outcome]) -> None:
        """Mark each image in the ledger (redone from the hashes on every run): a kept or unique
        image is ok, a duplicate filtered (duplicate, duplicate_of_reference), an image whose
        copy, link or move failed failed (stage place); an image no longer anywhere is ok with
        its hash alone (it is in no group)."""
        updates = []
        for idx, key in enumerate(c.keys):
            rec, status, reason, stage, err = c.record(idx), OK, None, "", None
            if plan.sizes[plan.groups[idx]] > 1:
                rec.update(group=int(plan.groups[idx]), kept=bool(plan.survives[idx]),
                           distance=int(plan.distance[idx]))
                if plan.kept_of[idx] != idx:
                    status, reason = FILTERED, "duplicate"
                    rec["duplicate_of"] = c.keys[plan.kept_of[idx]]
            if idx in plan.reference:
                status, reason = FILTERED, "duplicate_of_reference"
                rec.update(duplicate_of=plan.reference[idx][0], distance=plan.reference[idx][1])
            if c.moved_to[idx] is not None:
                rec["moved_to"] = c.moved_to[idx]
            if idx in failures:
                err = failures[idx]
                status, reason, stage = FAILED, err.reason, PLACE
            if status != OK:
                rec.update(status=status, reason=reason)
            elif c.plain[idx] and len(rec) == len(RECORD_KEYS):
                continue  # an ok image alone: its row already says so
            updates.append((key, stage, status, reason, err and err.error_type, err and err.message,
                            err and err.traceback, [rec]))
        for idx in np.flatnonzero(~present & ~everything.plain):
            updates.append((everything.keys[idx], "", OK, None, None, None, None,
                            [everything.record(idx)]))
        ledger.update_outcomes(updates)

    def _write_groups(self, c: Collection, plan: Plan) -> None:
        idx = plan.grouped() if len(c) else np.zeros(0, np.int64)
        # columns built from buffers: pyarrow's own conversion imports pandas (0.4 s)
        table = pa.table({
            "group": column(plan.groups[idx], pa.int64()),
            "path": column([c.keys[i] for i in idx], pa.string()),
            "kept": column(plan.survives[idx], pa.bool_()),
            "distance": column(plan.distance[idx], pa.int32()),
            "hash": column([to_hex(int(c.hashes[i])) for i in idx], pa.string()),
            "sha256": column([c.sha256[i] for i in idx], pa.string()),
            "width": column(c.width[idx], pa.int32()),
            "height": column(c.height[idx], pa.int32()),
            "bytes": column(c.size[idx], pa.int64()),
            "moved_to": column([c.moved_to[i] for i in idx], pa.string()),
        })
        with self.dst.atomic_path(GROUPS) as tmp:
            pq.write_table(table, tmp)

    def _write_report(self, c: Collection, plan: Plan) -> None:
        from ...io.dedup_report import ReportGroup, ReportMember, write_dedup_report
        idx = plan.grouped() if len(c) else np.zeros(0, np.int64)
        spool = self._spool or ThumbSpool(self.state_dir / SPOOL, THUMB_SIZE)

        def report_groups() -> Iterator[ReportGroup]:  # thumbnails from the spool, not the files
            bounds = np.flatnonzero(np.diff(plan.groups[idx])) + 1
            groups = np.split(idx, bounds) if len(idx) else []
            for start in range(0, len(groups), REPORT_CHUNK):
                chunk = [sorted(members.tolist(), key=lambda i: (not plan.survives[i], i))
                         for members in groups[start:start + REPORT_CHUNK]]
                thumbs = spool.get_many(c.sha256[i] for members in chunk for i in members)
                for members in chunk:
                    yield ReportGroup(int(plan.groups[members[0]]), [ReportMember(
                        path=c.keys[i], source_path=c.where[i], kept=bool(plan.survives[i]),
                        distance=int(plan.distance[i]), width=int(c.width[i]),
                        height=int(c.height[i]), bytes=int(c.size[i]),
                        phash_hex=to_hex(int(c.hashes[i])), moved_to=c.moved_to[i],
                        thumbnail=thumbs[c.sha256[i]]) for i in members])

        r = self.result
        summary = {"images": r["images"], "groups": r["groups"], "duplicates": r["duplicates"],
                   "kept": r["images"] - r["duplicates"], "exact": r["exact"]}
        if self.opts.against:
            summary["against"] = r["against"]
        if self.opts.action == "move-duplicates":
            summary.update(moved=r["moved"], moved_before=r["moved_before"])
        summary.update(threshold=self.opts.threshold, hash=self.opts.hash, keep=self.opts.keep)
        path = Path(self.opts.report)
        with contextlib.nullcontext(Path()) if path.is_absolute() else self.dst.staged() as root:
            write_dedup_report(root / path, report_groups(), title=f"datamill dedup: {self.src}",
                               summary=summary, thumb_size=THUMB_SIZE)
        spool.keep_only(c.sha256[i] for i in idx)
        spool.close()
        self._spool = None

    def summary_lines(self, ledger: Any) -> list[str]:
        if not self.result:
            return []
        r = self.result
        lines = [f"images: {r['images']} hashed"
                 + (f" ({r['gone']} hashed before are no longer there: not grouped)"
                    if r["gone"] else "")
                 + f"; {r['groups']} groups of duplicates ({r['exact']} exact copies); "
                 f"{r['duplicates']} duplicates filtered, {r['images'] - r['duplicates']} kept "
                 f"(threshold {self.opts.threshold}, keep {self.opts.keep})"]
        if self.opts.against:
            lines.append(f"against {self.opts.against}: {r['against']} images duplicate it")
        action = self.opts.action
        if action == "move-duplicates":
            lines.append(f"moved {r['moved']} duplicates ({r['moved_bytes'] / 1e6:.1f} MB) to "
                         f"{self.opts.move_to} this run"
                         + (f", {r['moved_before']} duplicates already there" if r["moved_before"] else "")
                         + f"; log: {self.dst.child(MOVE_LOG)}")
            if r["kept_moved"]:
                lines.append(f"{r['kept_moved']} groups keep a copy that is in --move-to (moved "
                             f"by an earlier run; groups.parquet column moved_to): {r['held']} "
                             "duplicates of them stay in SRC")
            elif r["held"]:
                lines.append(f"{r['held']} duplicates stay in SRC: the image they duplicate "
                             "went away during the run")
            else:
                lines.append("every group's kept copy is in SRC")
        elif action != "report" and "placed" in r:
            lines.append(f"{action}: {r['placed']} survivors placed in DST this run, "
                         f"{r['already']} already there"
                         + (f"; {r['unplaced']} copies of images no longer kept removed"
                            if r["unplaced"] else ""))
            if r["copied_not_linked"]:
                lines.append(f"hardlink: {r['copied_not_linked']} survivors are on another file "
                             "system than DST: copied instead")
        if r["failed"]:
            verb = "moved" if action == "move-duplicates" else f"placed ({action})"
            lines.append(f"{r['failed']} images could not be {verb} (failed, stage place; e.g. "
                         f"{r['failed_example']}); the next run tries again")
        lines.append(f"groups: {self.dst.child(GROUPS)}"
                     + (f"; report: {self.dst.child(self.opts.report)}" if self.opts.report else ""))
        lines += self.walk_lines()
        return lines

