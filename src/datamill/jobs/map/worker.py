"""What a worker does for the `map` job: load the user's function, run it over a task's
items into a part, and merge slices of parts into a shard.

A part is written with the `RecordWriter` of the job's format; its sidecar (JSON, written
after the part) says what the driver needs to cut shards without reading the records.
Records never cross processes: only the sidecar's numbers do.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ...atomic import write_text_atomic
from ...engine.task import TaskContext, failed_with, filtered, ok
from ...errors import UsageError
from ...io.records import RecordError, RecordWriter, Schema, safe_key, write_shard

_NO_STATE = object()
# One outcome object per kind, shared by every item of a task: pickled once per task (the
# records themselves are in the part; the ledger needs only the status)
_OK = ok(None)
_NONE = filtered("none", "the function returned None")
_EMPTY = filtered("empty", "the function yielded no record")
_worker: dict[str, Any] = {}  # this process's function, its init's state, the schema seen


def load_function(spec: str | Callable, flag: str = "--fn") -> Callable:
    """`FILE.py:NAME` or `package.module:NAME` (or a callable) -> the callable; a clear
    UsageError for a missing file, a syntax error, an import error or a missing name."""
    if callable(spec):
        return spec
    if not isinstance(spec, str) or ":" not in spec:
        raise UsageError(f"{flag} {spec!r}: expected FILE.py:NAME or package.module:NAME")
    where, name = spec.rsplit(":", 1)
    try:
        if where.endswith(".py") or os.sep in where:
            path = Path(where)
            if not path.is_file():
                raise UsageError(f"{flag} {spec}: no such file {where}")
            mod_name = f"_datamill_user_{abs(hash(str(path.resolve())))}"
            module = sys.modules.get(mod_name)
            if module is None:
                loader = importlib.util.spec_from_file_location(mod_name, path)
                module = importlib.util.module_from_spec(loader)
                sys.modules[mod_name] = module
                try:
                    loader.loader.exec_module(module)
                except BaseException:
                    del sys.modules[mod_name]
                    raise
        else:
            module = importlib.import_module(where)
    except UsageError:
        raise
    except SyntaxError as exc:
        raise UsageError(f"{flag} {spec}: syntax error in {exc.filename}, line {exc.lineno}: "
                         f"{exc.msg}") from exc
    except Exception as exc:  # noqa: BLE001 - importing the user's module failed: say how
        raise UsageError(f"{flag} {spec}: importing {where} failed: "
                         f"{type(exc).__name__}: {exc}") from exc
    fn = getattr(module, name, None)
    if not callable(fn):
        names = sorted(n for n, v in vars(module).items()
                       if callable(v) and not n.startswith("_")
                       and getattr(v, "__module__", None) == module.__name__)
        raise UsageError(f"{flag} {spec}: {where} has no function {name!r}"
                         + (f" (it defines: {', '.join(names[:10])})" if names else ""))
    return fn


def describe(fn: str | Callable) -> str:
    """What the fingerprint records of a function: its spec, or module:qualified name."""
    if isinstance(fn, str):
        return fn
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"


@dataclass(frozen=True)
class MapSpec:
    """What every worker needs (sent once, with the runner)."""

    fn: Any  # a spec string or a callable
    init: Any
    fmt: str
    ragged: tuple[str, ...]
    root: str  # DST, a local folder
    schema_file: str  # where the driver keeps the job's schema once it is known
    sizes: bool  # record each record's size (for shard_bytes)


@dataclass(frozen=True)
class MergeTask:
    """A side task: write shard `name` from slices of parts (paths relative to DST)."""

    name: str
    slices: tuple[tuple[str, int, int], ...]
    schema: dict


def init_worker(spec: MapSpec) -> None:
    """Once per worker: load the function and run the user's init."""
    _worker.clear()
    _worker["fn"] = load_function(spec.fn)
    _worker["state"] = _NO_STATE if spec.init is None else load_function(spec.init, "--init")()


def _loaded(spec: MapSpec) -> tuple[Callable, Any]:
    if "fn" not in _worker:  # the serial executor, or a runner without the initializer
        init_worker(spec)
    return _worker["fn"], _worker["state"]


def _job_schema(spec: MapSpec) -> Schema | None:
    """The job's schema once the driver has fixed it (read when it changed)."""
    try:
        st = os.stat(spec.schema_file)
    except FileNotFoundError:
        return None
    if _worker.get("schema_stamp") != (st.st_mtime_ns, st.st_size):
        with open(spec.schema_file, encoding="utf-8") as f:
            _worker["schema"] = Schema.from_json(json.load(f))
        _worker["schema_stamp"] = (st.st_mtime_ns, st.st_size)
    return _worker.get("schema")


def part_paths(task_id: int, suffix: str) -> tuple[str, str]:
    """A task's part and sidecar, relative to DST."""
    return f"_datamill/parts/{task_id:06d}{suffix}", f"_datamill/parts/{task_id:06d}.json"


def run_task(spec: MapSpec, suffix: str, task: TaskContext, payloads: list) -> list:
    """A worker's task: a merge, or the function over items into part `task.id`."""
    if len(payloads) == 1 and isinstance(payloads[0], MergeTask):
        return [merge(spec, task, payloads[0])]
    fn, state = _loaded(spec)
    schema = _job_schema(spec)
    part, meta = part_paths(task.id, suffix)
    writer: RecordWriter | None = None
    items: list[list] = []
    sizes: list[int] = []
    outcomes = []
    count = 0
    try:
        for i, (seq, key, value) in enumerate(payloads):
            task.start(i)
            try:
                out = fn(value) if state is _NO_STATE else fn(value, state)
                if out is None:
                    outcomes.append(_NONE)
                    task.advance(outcome="filtered")
                    continue
                records = _records(out)
                if records and schema is None:
                    schema = Schema.infer(records[0], spec.fmt, spec.ragged)
                records = [schema.conform(r, spec.fmt) for r in records]
            except Exception as exc:  # noqa: BLE001 - the item fails alone, with its records
                outcomes.append(failed_with(exc))
                task.advance(outcome="failed")
                continue
            if not records:
                outcomes.append(_EMPTY)
                task.advance(outcome="filtered")
                continue
            if writer is None:
                writer = RecordWriter(spec.fmt, os.path.join(spec.root, part), schema)
            for n, record in enumerate(records):
                size = writer.add(safe_key(key, n), record)
                if spec.sizes:
                    sizes.append(size)
            items.append([seq, key, count, len(records)])
            count += len(records)
            outcomes.append(_OK)
            task.advance(outcome="ok")
        if writer is not None:
            info = writer.close()
            writer = None
            side = {"records": info.records, "bytes": info.bytes, "sha256": info.sha256,
                    "schema": schema.to_json(), "items": items,
                    "sizes": sizes if spec.sizes else None}
            write_text_atomic(os.path.join(spec.root, meta), json.dumps(side))
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return outcomes


def _records(out: Any) -> list:
    """The function's result as a list of records (a generator runs to its end here, so an
    item's records are all kept or none)."""
    if isinstance(out, dict):
        return [out]
    if isinstance(out, (str, bytes)) or not hasattr(out, "__iter__"):
        raise RecordError(f"the function returned {type(out).__name__}; expected a dict (one "
                          "record), None (no record) or an iterable of dicts",
                          error_class="bad_record")
    records = list(out)
    for n, r in enumerate(records):
        if not isinstance(r, dict):
            raise RecordError(f"the function returned a {type(out).__name__} whose item {n} is "
                              f"{type(r).__name__}, not a dict (a record)",
                              error_class="bad_record")
    return records


def merge(spec: MapSpec, task: TaskContext, m: MergeTask) -> Any:
    """Write shard `m.name` from its slices (in a worker: never a copy in the driver)."""
    task.start(0)
    try:
        info = write_shard(spec.fmt, os.path.join(spec.root, m.name),
                           Schema.from_json(m.schema),
                           [(os.path.join(spec.root, p), a, b) for p, a, b in m.slices])
    except Exception as exc:  # noqa: BLE001 - the driver stops the job with the cause
        return failed_with(exc)
    return ok({"records": info.records, "bytes": info.bytes, "sha256": info.sha256})
