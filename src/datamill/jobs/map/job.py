"""Job `map`: a user's function over any items into shards of an exact size, resumable.

Items are the files of a folder (the function gets each path), the rows of a list file (a
dict; a txt line as a string) or the values of a Python iterable.  Each task runs the
function over a batch of items and writes their records as a part (jobs/map/worker.py); the
driver cuts the parts' records into shards (jobs/map/assembler.py): a part that is exactly
one shard is hard-linked into place, any other shard is merged by a worker.  Shards are
numbered 00000, 00001, ... whatever the worker count; `index.json` lists them.

Every output goes through the ledger: parts are task outputs, shards are outputs of the
task that writes them (a merge) or of the part they are (a link), and each shard's slices
are job state committed with it, so a crash at any moment leaves each record in exactly one
shard after the next run.
"""
from __future__ import annotations

import errno
import functools
import json
import os
from typing import Any, Callable, Iterator

from ...atomic import write_text_atomic
from ...engine.fault import fault
from ...engine.job import Item, chunked
from ...engine.ledger import COMMITTED
from ...engine.task import OK, TaskRunner
from ...errors import SystemicFailure, UsageError
from ...io.records import SUFFIX, RecordError, Schema
from ...io.sources import SourceError, count_rows, read_rows, sniff_format, walk_files, WalkStats
from ..tree import TreeJob
from .assembler import Assembler, Part, Shard
from .options import MapOptions
from .worker import MapSpec, MergeTask, describe, init_worker, load_function, part_paths, run_task

SCHEMA_FILE = "map-schema.json"  # in the state folder: the job's schema, for the workers
INDEX = "index.json"


class MapJob(TreeJob):
    name = "map"
    unit = "item"
    kind = "files"
    batch_size = None  # batches sized by the measured time per item...
    task_seconds = 10.0  # ...up to 10 s and one shard of items (a part that is a whole shard
    # is linked, not merged); the engine shrinks the last tasks so that workers share the tail
    # the manifest has a row per item (key, source, status, reason); its records are in the
    # shards under the keys <item key>_<n>

    def __init__(self, src: Any, dst: str | os.PathLike, options: MapOptions,
                 key: Callable[[Any], str] | None = None):
        self.iterable = None if isinstance(src, (str, os.PathLike)) else src
        super().__init__("<iterable>" if self.iterable is not None else src, dst, options,
                         options.extensions or None)  # type: ignore[arg-type]  # None: all files
        self.key_fn = key
        self.max_batch = options.shard_size
        # ordered: a task's items end where a shard would if each gave one record, so its
        # part can be that shard (linked, not merged)
        self.aligned = options.ordered and options.shard_bytes is None
        self.suffix = SUFFIX[options.output_format]
        self.asm = Assembler(options.shard_size, options.shard_bytes, options.ordered)
        self.schema: Schema | None = None
        self._due: list[Shard] = []  # shards cut, not yet linked or sent to a worker
        self._merging: dict[str, Shard] = {}  # shard name -> shard being merged
        self._free: list[Part] = []  # parts no shard needs, removed once that is durable
        self._ended = False
        self._merge_ids: set[int] = set()  # side tasks (merges), to tell them from parts
        self.records_written = 0  # this run, in parts
        self.shards_committed = 0  # this run

    # -- checks ----------------------------------------------------------------------------
    def validate(self) -> None:
        self.opts.validate()
        load_function(self.opts.fn)
        if self.opts.init is not None:
            load_function(self.opts.init, "--init")
        if self.dst.is_remote:
            raise UsageError("map writes its shards into a local folder (or a shared mount "
                             f"for --executor ray), not {self.dst}")
        if self.iterable is not None:
            self.validate_dst()  # no SRC to check
            return
        super(TreeJob, self).validate()
        if self.src.is_file():
            try:
                fmt = self.opts.input_format or sniff_format(self.src)
                rows = read_rows(self.src, fmt, text_column="text")
                next(rows, None)
                rows.close()
            except (ValueError, SourceError) as exc:
                raise UsageError(str(exc)) from exc

    def fingerprint(self) -> dict:
        fp = self.opts.fingerprint()
        fp["fn"] = describe(self.opts.fn)
        fp["init"] = None if self.opts.init is None else describe(self.opts.init)
        fp["ragged"] = list(self.opts.ragged)
        return fp

    def options(self) -> dict:
        return {**self.fingerprint(), "extensions": list(self.extensions or ()),
                "input_format": self.opts.input_format}

    # -- items -------------------------------------------------------------------------------
    def items(self) -> Iterator[Item]:
        if self.iterable is not None:
            yield from self._iterable_items()
        elif self.src.is_dir():
            for seq, entry in enumerate(self.files()):
                yield self.item_for(entry, (seq, entry.rel, entry.path))
        else:
            rows = read_rows(self.src, self.opts.input_format, text_column="text")
            txt = (self.opts.input_format or sniff_format(self.src)) == "txt"
            for seq, row in enumerate(rows):
                key = f"{row.index:010d}"
                if row.fields is None:
                    yield Item(key, (seq, key, None), error=("bad_row", row.error or "bad row"))
                    continue
                value = row.fields["text"] if txt else row.fields
                yield Item(key, (seq, key, value))

    def _iterable_items(self) -> Iterator[Item]:
        seen: set[str] | None = set() if self.key_fn is not None else None
        for seq, value in enumerate(self.iterable):
            if self.key_fn is None:
                key = f"{seq:010d}"
            else:
                key = self.key_fn(value)
                if not isinstance(key, str) or not key:
                    raise UsageError(f"key= gave {key!r} for item {seq}: keys are non-empty "
                                     "strings")
                if key in seen:
                    yield Item(f"{key}#{seq}", (seq, key, value),
                               error=("duplicate_key", f"item {seq}: key {key!r} was given "
                                      "to an earlier item"))
                    continue
                seen.add(key)
            yield Item(key, (seq, key, value))

    def align(self, payload: Any) -> int:
        return self.opts.shard_size - payload[0] % self.opts.shard_size

    def count(self) -> int | None:
        if self.iterable is not None:
            return len(self.iterable) if hasattr(self.iterable, "__len__") else None
        if self.src.is_dir():
            return super().count()
        return count_rows(self.src, self.opts.input_format)

    # -- workers -----------------------------------------------------------------------------
    def _spec(self) -> MapSpec:
        o = self.opts
        return MapSpec(o.fn, o.init, o.output_format, tuple(o.ragged), str(self.dst.path),
                       str(self.state_dir / SCHEMA_FILE), o.shard_bytes is not None)

    def runner(self) -> TaskRunner:
        spec = self._spec()
        return TaskRunner(batch_fn=functools.partial(run_task, spec, self.suffix),
                          initializer=init_worker, initargs=(spec,))

    def outputs(self, task_id: int, payloads: list) -> list[str]:
        if len(payloads) == 1 and isinstance(payloads[0], MergeTask):
            return [payloads[0].name]
        return list(part_paths(task_id, self.suffix))

    def shard_name(self, index: int) -> str:
        return f"{index:05d}{self.suffix}"

    # -- the start of a run ------------------------------------------------------------------
    def prepare(self, ledger: Any, overwrite: bool) -> None:
        if not overwrite:
            self._check_sources(ledger)
        state = ledger.states("schema")
        self.schema = Schema.from_json(state["job"]) if "job" in state else None
        self._write_schema()
        shards = [Shard.from_state(int(k), v) for k, v in ledger.states("shard").items()]
        parts = []
        for path in ledger.outputs(state=COMMITTED):
            if not (path.startswith("_datamill/parts/") and path.endswith(".json")):
                continue
            task = int(path.rsplit("/", 1)[1].split(".")[0])
            data, meta = part_paths(task, self.suffix)
            try:
                with open(self.dst.path / meta, encoding="utf-8") as f:
                    side = json.load(f)
            except FileNotFoundError:  # the task wrote no record
                self._remove(ledger, [data, meta])
                continue
            part = Part.from_sidecar(task, data, meta, side)
            part.linkable = self.schema is not None and part.schema == self.schema.to_json()
            parts.append(part)
        self._due = self.asm.restore(parts, shards)
        for part in list(self.asm.parts.values()):
            if part.refs == 0 and part.planned >= part.records:
                self._remove(ledger, [part.path, part.meta])  # every record is in a shard
                del self.asm.parts[part.task]
        self._due = [s for s in shards if s.state != "done"] + self._due
        ledger.flush()

    def _check_sources(self, ledger: Any) -> None:
        """A source whose records are in committed shards must not change under them: they
        would be in the shards twice, old and new.  Refused, naming the files."""
        if self.iterable is not None:
            return
        if self.src.is_file():
            st = os.stat(self.src)
            now = [st.st_size, st.st_mtime]
            before = ledger.get_meta("map_source")
            if before is not None and before != now and ledger.count_top_level():
                raise UsageError(f"SRC {self.src} changed since its records were written "
                                 "(size or time); its rows are keyed by position, so they "
                                 "would be written twice. Rerun with --overwrite to redo "
                                 "everything, or write to another DST.")
            ledger.set_meta("map_source", now)
            return
        changed: list[str] = []
        for chunk in chunked(walk_files(self.src, self.extensions, WalkStats()), 900):
            states = ledger.lookup([e.rel for e in chunk])
            for e in chunk:
                st = states.get(e.rel)
                if st is not None and st.status == OK and not st.same_source(e.size, e.mtime):
                    changed.append(e.rel)
        if changed:
            shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more"
                                              if len(changed) > 5 else "")
            raise UsageError(f"{len(changed)} source files changed since their records were "
                             f"written to the shards: {shown}. Committed shards are never "
                             "rewritten; rerun with --overwrite to redo everything, or "
                             "write to another DST.")

    # -- as tasks end ----------------------------------------------------------------------
    def item_ended(self, key: str, payload: Any, status: str, earlier: bool) -> None:
        if self.opts.ordered:
            self._due += self.asm.item_ended(payload[0], status == OK)

    def after_commit(self, task_id: int | None, ledger: Any) -> list:
        if task_id is not None and task_id not in self._merge_ids:
            self._part_committed(task_id, ledger)
        self._release(ledger)
        return self._dispatch(ledger)

    def side_done(self, task_id: int, payload: Any, outcome: Any, ledger: Any) -> None:
        shard = self._merging.pop(payload.name)
        if outcome.status != OK:
            raise SystemicFailure(f"writing shard {self.dst.child(payload.name)} failed: "
                                  f"{outcome.message}; run the same command again to resume")
        fault("shard")  # merged by a worker, not yet committed
        info = outcome.records
        shard.bytes, shard.sha256 = info["bytes"], info["sha256"]
        self._shard_done(shard, ledger)
        self._merge_ids.add(task_id)

    def at_end(self, ledger: Any) -> list:
        payloads = self._dispatch(ledger)
        if payloads or self._ended:
            self._release(ledger)
            return payloads
        self._ended = True
        self._due += self.asm.end()
        payloads = self._dispatch(ledger)
        self._release(ledger)
        return payloads

    def _part_committed(self, task_id: int, ledger: Any) -> None:
        data, meta = part_paths(task_id, self.suffix)
        try:
            with open(self.dst.path / meta, encoding="utf-8") as f:
                side = json.load(f)
        except FileNotFoundError:  # no item of the task had a record
            self._remove(ledger, [data, meta])
            return
        part = Part.from_sidecar(task_id, data, meta, side)
        theirs = Schema.from_json(part.schema)
        if self.schema is None:
            self._set_schema(theirs, ledger)
        elif not self.schema.covers(theirs):
            try:
                merged = self.schema.merge(theirs)
            except RecordError as exc:
                self._reject(part, str(exc), ledger)
                return
            self._set_schema(merged, ledger)
        part.linkable = part.schema == self.schema.to_json()
        self.records_written += part.records
        self._due += self.asm.add_part(part)

    def _reject(self, part: Part, message: str, ledger: Any) -> None:
        """A part written before the job's schema was known, whose records do not fit it:
        its items fail with the reason (the first record committed fixed the schema)."""
        msg = f"{message} (the job's schema was fixed by the first record committed)"
        ledger.update_outcomes([(key, "", "failed", "schema_mismatch", "RecordError", msg,
                                 None, None) for _, key, _, _ in part.items])
        self.asm.reject(part)
        self._remove(ledger, [part.path, part.meta])

    def _set_schema(self, schema: Schema, ledger: Any) -> None:
        self.schema = schema
        ledger.put_state("schema", "job", schema.to_json())
        self._write_schema()

    def _write_schema(self) -> None:
        path = self.state_dir / SCHEMA_FILE
        if self.schema is None:
            path.unlink(missing_ok=True)
        else:
            write_text_atomic(path, json.dumps(self.schema.to_json()), replace=True)

    # -- shards ------------------------------------------------------------------------------
    def _dispatch(self, ledger: Any) -> list:
        """Link the due shards that are one part; the payloads of merges for the others."""
        payloads = []
        for old in self.asm.dissolved:  # the last shard of an earlier run, cut again: its
            ledger.put_state("shard", f"{old.index:08d}", None)  # records are in the parts
            ledger.flush()
            self._remove(ledger, [self.shard_name(old.index)])
        self.asm.dissolved.clear()
        due, self._due = self._due, []
        for shard in due:
            name = self.shard_name(shard.index)
            ledger.put_state("shard", f"{shard.index:08d}", shard.to_state())
            if shard.link and self._link(shard, name, ledger):
                continue
            shard.link = False
            self._merging[name] = shard
            slices = tuple((self.asm.parts[t].path, a, b) for t, a, b in shard.slices)
            payloads.append(MergeTask(name, slices, self.schema.to_json()))
        return payloads

    def _link(self, shard: Shard, name: str, ledger: Any) -> bool:
        """Make the part that is shard `shard` that shard: a hard link, recorded as pending
        first (a crash leaves the part, and the link is removed as unfinished)."""
        part = self.asm.parts[shard.slices[0][0]]
        self._check_free(name, ledger)
        if ledger.output_state(name) is not None:  # ours, left by a run that stopped
            self._remove(ledger, [name])
        ledger.add_pending(part.task, [name], self.run_id)
        try:
            os.link(self.dst.path / part.path, self.dst.path / name)
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                raise SystemicFailure(f"{self.dst.child(name)} appeared while datamill was "
                                      "writing it; it is left alone") from exc
            ledger.drop_outputs([name])
            return False  # no hard links here: a worker copies it
        fault("shard")  # linked, not yet committed
        shard.bytes, shard.sha256 = part.bytes, part.sha256
        self._shard_done(shard, ledger)
        ledger.commit_task(part.task)
        return True

    def _check_free(self, name: str, ledger: Any) -> None:
        if ledger.output_state(name) is None and self.dst.exists(name):
            raise SystemicFailure(f"{self.dst.child(name)} exists and was not written by "
                                  "datamill: shards are numbered without gaps, so the job "
                                  "stops here (move the file away and run again)")

    def _shard_done(self, shard: Shard, ledger: Any) -> None:
        self.shards_committed += 1
        self._free += self.asm.shard_done(shard)
        ledger.put_state("shard", f"{shard.index:08d}", shard.to_state())

    def _release(self, ledger: Any) -> None:
        """Remove the parts no shard needs, once the shards that hold them are committed."""
        if not self._free:
            return
        ledger.flush()
        free, self._free = self._free, []
        for part in free:
            self._remove(ledger, [part.path, part.meta])

    def _remove(self, ledger: Any, paths: list[str]) -> None:
        for p in paths:
            self.dst.remove_output(p)
        ledger.drop_outputs(paths)

    # -- reports -----------------------------------------------------------------------------
    def report_names(self) -> list[str]:
        return [INDEX]

    def shards_done(self, ledger: Any) -> list[dict]:
        out = []
        for key, s in ledger.states("shard").items():
            if s["state"] == "done":
                out.append({"name": self.shard_name(int(key)), "records": s["records"],
                            "bytes": s["bytes"], "sha256": s["sha256"]})
        return out

    def reports(self, ledger: Any) -> None:
        shards = self.shards_done(ledger)
        schema = ledger.states("schema").get("job")
        index = {"format": self.opts.output_format, "ordered": self.opts.ordered,
                 "shard_size": self.opts.shard_size, "shard_bytes": self.opts.shard_bytes,
                 "records": sum(s["records"] for s in shards), "schema": schema,
                 "shards": shards}
        with self.dst.atomic_path(INDEX) as tmp, open(tmp, "w", encoding="utf-8") as f:
            json.dump(index, f, indent=1)

    def progress_note(self) -> str:
        return f"{self.records_written} records written, {self.shards_committed} shards committed"

    def summary_lines(self, ledger: Any) -> list[str]:
        shards = self.shards_done(ledger)
        n = sum(s["records"] for s in shards)
        lines = [f"{n} records in {len(shards)} {self.opts.output_format} shards "
                 f"({self.dst.child('00000' + self.suffix)}, ...), listed in {INDEX}"]
        return lines + (self.walk_lines() if self.iterable is None else [])

    def source_gone(self) -> bool:
        return self.iterable is None and super().source_gone()
