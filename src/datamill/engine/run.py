"""The run loop every job goes through.

lock the state folder -> remove what earlier runs left unfinished -> source -> skip what the
ledger says is done -> scheduler/executor (each task's outputs recorded as pending before it
runs, committed with its outcomes) -> progress -> reports and a summary.  Stops early, with
the cause, on systemic failure (a full disk anywhere included); on Ctrl-C stops submitting,
collects what finishes within a few seconds, removes what did not, saves, exits 130.
"""
from __future__ import annotations

import dataclasses
import errno
import functools
import itertools
import json
import logging
import os
import signal
import socket
import sqlite3
import sys
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Iterable, Iterator

from ..errors import OutputTaken, SystemicFailure, UsageError
from .executors import EXECUTORS, Executor, WorkerInitError, get_executor
from ..options import Options, Spec, option
from .fault import fault
from .job import Item, Job, chunked
from .job_reports import REPORT_NAMES, write_failures, write_manifest, write_stats
from .ledger import PENDING, ItemState, Ledger
from .lock import StateLock
from .progress import Progress
from .scheduler import Result, Scheduler
from .dst import LEDGER_FILE, STATE_FOLDER, state_dir_for
from .task import FAILED, FILTERED, OK, WorkItem, failed

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
RESERVE = "reserve"  # a file of the state folder, deleted to close a run on a full disk
log = logging.getLogger("datamill")


def _retry_classes(value: str) -> bool | set[str]:
    return True if value == "all" else {c.strip() for c in value.split(",") if c.strip()}


@dataclass
class RunOptions(Options):
    """Options of the engine that every job takes; none of them changes per-item results,
    so none enters the fingerprint.  A job option with the same flag replaces one of these
    for that job (download's --timeout and --retries are per URL)."""

    workers: int | None = option(None, "Worker processes (default: one per core).", min=1)
    executor: str = option(
        "local", "serial: in this process (for pdb); local: worker processes; ray: a Ray cluster.",
        choices=EXECUTORS, fingerprint=False)
    quiet: bool = option(False, "No progress and no summary.", aliases=("-q",),
                         fingerprint=False)
    overwrite: bool = option(False, "Remove every output the ledger says datamill wrote, then "
                             "redo everything (also with other options).", fingerprint=False)
    retry_failed: bool | Collection[str] = option(  # True: every class; else these classes
        False, "Retry items that failed before (all, or only these comma-separated error "
        "classes).", parse=_retry_classes, metavar="[CLASSES]", show_default=False,
        click={"is_flag": False, "flag_value": "all", "default": None}, fingerprint=False)
    limit: int | None = option(None, "Only the first N items.", min=0, fingerprint=False)
    dry_run: bool = option(False, "Say what would be done; do nothing.", fingerprint=False)
    timeout: float | None = option(None, "Seconds one item may take before it is killed.",
                                   min=0, min_open=True, fingerprint=False)
    retries: int = option(1, "Further attempts for an item that failed in a way that may pass.",
                          min=0, fingerprint=False)
    failure_window: int = option(1000, "Items over which systemic failure is judged.", min=1,
                                 cli=False, fingerprint=False)
    failure_ratio: float = option(0.95, "Failed share of the window that stops the job.",
                                  min=0, max=1, cli=False, fingerprint=False)
    progress_interval: float = option(10.0, "Seconds between plain progress lines.", min=0,
                                      cli=False, fingerprint=False)
    grace: float = option(5.0, "Seconds given to running tasks after Ctrl-C.", min=0,
                          cli=False, fingerprint=False)
    executor_options: dict[str, Any] = option(  # the executor's own options
        default_factory=dict, cli=False, fingerprint=False, entries={
            "address": Spec("Ray cluster address for --executor ray (auto, ray://host:port).",
                            flag="--ray-address", name="ray_address", kind="str"),
            "cpus_per_task": Spec("CPUs Ray reserves for each task (--executor ray; default 1).",
                                  min=0, min_open=True, kind="float")})
    state_dir: str | os.PathLike | None = option(
        None, "Local folder of the job's ledger (default: DST/_datamill, or for a URL DST a "
        "folder under ~/.cache/datamill named after it).", fingerprint=False,
        folder=True)
    allow_existing: bool = option(False, "Write into a non-empty DST that is not a datamill "
                                  "folder; its files are never touched.", fingerprint=False)
    break_lock: bool = option(False, "Take over DST's lock held by a run on another host (only "
                              "if no run there is alive).", fingerprint=False)
    argv: list[str] = option(default_factory=list, cli=False, fingerprint=False)


@dataclass
class RunReport:
    """What a run ended with: the exit status, counts over the whole job, and the outputs."""

    exit_code: int
    counts: dict[str, int]
    stats: dict[str, Any]
    dst: Path | str  # the folder, or the URL of a remote DST
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.exit_code == EXIT_OK


def run_job(job: Job, opts: RunOptions | None = None) -> RunReport:
    """Run `job` to completion (or to a stop); raises UsageError for a bad request."""
    opts = opts or RunOptions()
    if job.executors and opts.executor not in job.executors:
        if opts.executor != "local":  # not the default: the user asked for it
            raise UsageError(f"--executor {opts.executor}: the {job.name} job runs only with "
                             f"{' or '.join(job.executors)} (its inputs share this machine's "
                             "memory)")
        opts = dataclasses.replace(opts, executor=job.executors[0])
    job.state_dir = state_dir_for(job.dst, opts.state_dir)
    if opts.dry_run:
        job.dry_run = True
        job.validate()
        return _dry_run(job, opts)
    check_dst_is_ours(job, opts.allow_existing)
    job.validate()
    executor = make_executor(opts)
    lock = StateLock(job.state_dir, str(job.dst))
    lock.acquire(opts.break_lock)
    try:
        ledger = open_ledger(job)
        try:
            check_fingerprint(ledger, job, opts.overwrite)
            check_owner(ledger, job)
            return _Run(job, opts, ledger).run(executor)
        finally:
            try:
                ledger.close()
            except (sqlite3.Error, OSError):
                pass  # the run already ended with the cause; the next run resumes
    finally:
        lock.release()


def check_dst_is_ours(job: Job, allow_existing: bool) -> None:
    """Refuse a DST that holds files but no ledger of ours (datamill would write among files
    it does not know), unless the user allows it; then they are never touched."""
    if (job.state_dir / LEDGER_FILE).is_file() or allow_existing:
        return
    try:
        names = sorted(n for n in job.dst.names() if n != STATE_FOLDER)
    except (OSError, UsageError):
        return  # not a folder, unreadable: validate() says so
    if names:
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise UsageError(
            f"DST {job.dst} is not empty and is not a datamill folder (it holds {shown}). "
            "Choose an empty or new DST, or pass --allow-existing to write beside these files "
            "(datamill never touches a file it did not write).")


def check_owner(ledger: Ledger, job: Job) -> None:
    """A URL DST records which ledger writes it (`_datamill/owner.json`): a run from another
    machine or state folder would not know what the first one wrote, so it is refused."""
    if not job.dst.is_remote:
        return
    mine = {"ledger": ledger.get_meta("ledger_id"), "host": socket.gethostname(),
            "state_dir": str(job.state_dir)}
    rel = "_datamill/owner.json"
    try:
        owner = json.loads(job.dst.fs.cat_file(job.dst.remote(rel)))
    except FileNotFoundError:
        job.dst.write_bytes(rel, json.dumps(mine).encode())
        return
    if owner.get("ledger") != mine["ledger"]:
        raise UsageError(
            f"DST {job.dst} is written by the ledger of host {owner.get('host')} in "
            f"{owner.get('state_dir')}, not by this one ({mine['state_dir']}): run from there, "
            "or give that --state-dir")


def make_executor(opts: RunOptions) -> Executor:
    """The executor the options ask for, with its own options (it refuses those it does not
    take); a missing optional dependency is a usage error."""
    try:
        return get_executor(opts.executor, opts.workers, **opts.executor_options)
    except ImportError as exc:
        raise UsageError(str(exc)) from exc


def open_ledger(job: Job) -> Ledger:
    """The job's ledger in its state folder.  A state folder outside DST remembers its DST:
    using it for another DST would skip items whose outputs are not there."""
    path = job.state_dir / LEDGER_FILE
    try:
        ledger = Ledger(path)
    except (OSError, sqlite3.Error) as exc:
        raise UsageError(f"the state folder {job.state_dir} is not writable ({exc}); choose "
                         "another with --state-dir") from exc
    if ledger.get_meta("ledger_id") is None:
        ledger.set_meta("ledger_id", uuid.uuid4().hex)
    reserve = job.state_dir / RESERVE
    if not reserve.exists():
        try:
            reserve.write_bytes(b"\0" * (1 << 20))
        except OSError:
            reserve.unlink(missing_ok=True)
    if job.dst.path is not None and job.state_dir == job.dst.path / STATE_FOLDER:
        return ledger  # travels with DST (a moved folder keeps its ledger)
    owner = ledger.get_meta("dst")
    if owner not in (None, job.dst.url):
        ledger.close()
        raise UsageError(f"the state folder {job.state_dir} holds the ledger of DST {owner}, "
                         f"not {job.dst}; give each DST its own --state-dir")
    ledger.set_meta("dst", job.dst.url)
    return ledger


def check_fingerprint(ledger: Any, job: Job, overwrite: bool) -> None:
    """Refuse a DST made by another job, or with other result-changing options (unless
    --overwrite, which starts again from a clean slate)."""
    new = json.loads(json.dumps(job.fingerprint()))
    old_job = ledger.get_meta("job")
    old = ledger.get_meta("fingerprint")
    if old_job not in (None, job.name):
        raise UsageError(f"DST {job.dst} holds the outputs of a '{old_job}' job, not '{job.name}'")
    if old is not None and old != new and not overwrite:
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        what = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
        raise UsageError(
            f"DST {job.dst} was made with other options ({what}). Rerun with --overwrite to "
            "redo everything with the new options, or choose another DST.")


def _disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    return isinstance(exc, sqlite3.OperationalError) and "full" in str(exc)


class _Interrupts:
    """SIGINT and SIGTERM during a run: the first sets a flag that the loop checks (so no
    handler can swallow it), a second one raises KeyboardInterrupt to stop waiting."""

    def __init__(self) -> None:
        self.count = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_Interrupts":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                if signal.getsignal(sig) == signal.SIG_IGN:
                    continue  # started in the background by a shell: it stays ignored
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: Ctrl-C is the caller's
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self.count > 1:
            raise KeyboardInterrupt

    def check(self) -> None:
        if self.count:
            raise KeyboardInterrupt

    def __exit__(self, *exc: Any) -> None:
        for sig, previous in self._previous.items():
            try:
                signal.signal(sig, previous)
            except (ValueError, TypeError):
                pass


class _Run:
    def __init__(self, job: Job, opts: RunOptions, ledger: Ledger):
        self.job, self.opts, self.ledger = job, opts, ledger
        self.meta: dict[str, Item] = {}
        self.skipped_done = 0
        self.skipped_failed = 0
        # the failures among the last `failure_window` outcomes: (outcome number, key, class)
        self.window: deque[tuple[int, str, str | None]] = deque()
        self.outcomes_seen = 0
        self.sched: Scheduler | None = None
        self.progress: Progress | None = None
        self.run_id = 0
        self.dry = False  # a dry run only counts: it removes nothing
        self.read_all = False  # the whole input was read (so items not seen in it are gone)
        self.notes: list[str] = []
        self.interrupts = _Interrupts()
        self.item_errors: list[Item] = []
        self.top_before = 0  # the input's items in the ledger when the run started
        self.found_top = 0
        self.input_error: str | None = None  # reading the input failed part-way
        self.last_task: int | None = None
        self.total: int | None = None  # the input's items, once counted
        self.read = 0  # items read from the input so far
        # top-level key -> [items that followed from it still to run, worst status, its
        # first failure class]
        self.open: dict[str, list] = {}
        # the job's item_ended, when it has one (most jobs do not: no call per item)
        self._item_ended = (job.item_ended if type(job).item_ended is not Job.item_ended
                            else None)

    # -- what to run -----------------------------------------------------------------------
    def _source(self) -> Iterator[tuple[str, Any]]:
        items: Iterable[Item] = self.job.items()
        if self.opts.limit is not None:
            items = itertools.islice(items, self.opts.limit)
        chunks = chunked(items, 256)
        while True:
            try:
                chunk = next(chunks)
            except StopIteration:
                break
            except (KeyboardInterrupt, SystemicFailure, UsageError):
                raise
            except Exception as exc:  # noqa: BLE001 - reading the input failed part-way:
                # what was read runs to its end, then the run stops naming the cause
                name = str(self.job.src)
                self.input_error = (str(exc) if name in str(exc)
                                    else f"reading the input {name} failed: {exc}")
                return
            self.interrupts.check()
            self.read += len(chunk)
            for it in self._fresh(chunk):
                if it.error is not None:
                    self.item_errors.append(it)
                    continue
                self.meta[it.key] = it
                yield it.key, it.payload
        self.read_all = self.opts.limit is None

    def _fresh(self, items: list[Item]) -> Iterator[Item]:
        """The items not done yet; a finished plan still yields its unfinished parts."""
        states = self.ledger.lookup([it.key for it in items])
        if items and items[0].parent is None:
            self.found_top += len(states)  # items of earlier runs still in the input
        for it in items:
            st = states.get(it.key)
            if st is not None and st.same_source(it.size, it.mtime):
                if st.status in (OK, FILTERED):
                    self.skipped_done += it.parent is None  # counted in the input's units
                    follow: list[Item] = []
                    if st.status == OK and it.stage != self.job.final_stage:
                        follow = list(self._fresh(self._expand(it, json.loads(st.records))))
                    self._opened(it, OK, len(follow), now=False)
                    if it.parent is None and self._item_ended is not None:
                        self._item_ended(it.key, it.payload, st.status, True)
                    yield from follow
                    continue
                if not self._retrying(st.reason):
                    self.skipped_failed += it.parent is None
                    self._opened(it, FAILED, 0, now=False)
                    if it.parent is None and self._item_ended is not None:
                        self._item_ended(it.key, it.payload, FAILED, True)
                    continue
            if st is not None and not self.dry:
                self._discard_old(it, st)
            yield it

    # -- progress in the input's units (a video is done when its clip ranges are) ----------
    def _opened(self, it: Item, status: str, pending: int, now: bool) -> None:
        """Item `it` ended with `status` (in this run if `now`, else in an earlier one) and
        `pending` items that followed from it still to run; a top-level item is counted once
        they have."""
        if it.parent is not None or self.progress is None:
            return
        if pending:
            self.open[it.key] = [pending, status, None]
        elif now:
            self.progress.update(status)
        else:
            self.progress.skip()

    def _closed(self, it: Item, status: str, reason: str | None) -> None:
        """A result for `it`: counts its top-level item when that one is complete."""
        if it.parent is None:
            if status != OK or it.stage == self.job.final_stage:
                self.progress.update(status, reason)
            return
        entry = self.open.get(it.parent)
        if entry is None:
            return
        entry[0] -= 1
        if status == FAILED or (status == FILTERED and entry[1] == OK):
            entry[1] = status
            if status == FAILED:
                entry[2] = reason
        if entry[0] == 0:
            del self.open[it.parent]
            self.progress.update(entry[1], entry[2])

    def _expand(self, it: Item, records: Any) -> list[Item]:
        follow = list(self.job.expand(it, records))
        for f in follow:
            f.parent = it.key
        return follow

    def _discard_old(self, it: Item, st: ItemState) -> None:
        """Before an item is redone: the outputs it wrote (when a job's outputs are per item)
        and the items that followed from it (a changed video's clip ranges) go."""
        if it.stage != self.job.final_stage:
            children = self.ledger.children(it.key)
            for child in self.ledger.lookup(children).values():
                if child.task is not None:
                    self._remove_outputs(self.ledger.outputs(task=child.task))
            self.ledger.forget(children)
        if self.job.outputs_per_item and st.task is not None:
            self._remove_outputs(self.ledger.outputs(task=st.task))

    # -- outputs ---------------------------------------------------------------------------
    def _remove_outputs(self, paths: list[str]) -> int:
        """Remove outputs the ledger lists (and only those), then forget them."""
        removed = 0
        for path in paths:
            removed += self.job.dst.remove_output(path)
        self.ledger.drop_outputs(paths)
        return removed

    def _on_submit(self, task_id: int, task: list[WorkItem]) -> None:
        """Record what the task will write before it runs; a path taken by a file datamill
        did not write fails the task's items (the file is left alone)."""
        self.ledger.next_task_id = task_id + 1  # saved with the next flush
        paths = self.job.outputs(task_id, [w.payload for w in task])
        if not paths:
            return
        for path in paths:
            state = self.ledger.output_state(path)
            if state is None and self.job.dst.exists(path):
                raise OutputTaken(self.job.dst.child(path))
            if state is not None:  # ours, from an earlier task: replaced
                self._remove_outputs([path])
        self.ledger.add_pending(task_id, paths, self.run_id)
        fault("submitted")

    def _on_task_end(self, task_id: int, completed: bool) -> None:
        if completed:
            self.ledger.commit_task(task_id)
            for payload in self.job.after_commit(task_id, self.ledger):
                self.sched.add_side(payload, functools.partial(self._side_done, payload))
        else:  # its worker is gone: what it wrote is incomplete
            self._remove_outputs(self.ledger.outputs(state=PENDING, task=task_id))

    def _side_done(self, payload: Any, task_id: int, outcome: Any) -> None:
        self.job.side_done(task_id, payload, outcome, self.ledger)

    def _at_end(self) -> bool:
        """The input is done and nothing runs: the job's last side tasks, unless the run is
        stopping (interrupted, or its input failed part-way)."""
        if self.interrupts.count or self.input_error:
            return False
        payloads = self.job.at_end(self.ledger)
        for payload in payloads:
            self.sched.add_side(payload, functools.partial(self._side_done, payload))
        return bool(payloads)

    def _start(self) -> None:
        """Close what earlier runs left open: runs marked running (their process is dead,
        since this run holds the lock), outputs never committed; with --overwrite, every
        output.  Then the job undoes what else it left (dedup's moves)."""
        ledger = self.ledger
        for run_id, pid, host in ledger.running_runs():
            ledger.mark_run(run_id, "interrupted")
        self.run_id = ledger.begin_run(self.opts.argv or sys.argv, os.getpid(), socket.gethostname())
        self.job.run_id = self.run_id
        n = self._remove_outputs(ledger.outputs(state=PENDING))
        if n:
            self.notes.append(f"removed {n} unfinished outputs of an earlier run that stopped")
        if self.opts.overwrite:
            n = self._remove_outputs(ledger.outputs())
            ledger.clear()
            self.notes.append(f"--overwrite: removed the {n} outputs of earlier runs")
        self._check_reports()
        self.top_before = ledger.count_top_level()
        self.job.prepare(ledger, self.opts.overwrite)
        ledger.set_meta("job", self.job.name)
        ledger.set_meta("unit", self.job.unit)
        ledger.set_meta("fingerprint", json.loads(json.dumps(self.job.fingerprint())))
        ledger.set_meta("options", json.loads(json.dumps(self.job.options(), default=str)))
        fault("startup")

    def _check_reports(self) -> None:
        """The reports are rewritten at the end of every run: a file of the user's under one
        of their names is refused now rather than replaced then."""
        names = list(REPORT_NAMES) + list(self.job.report_names())
        earlier = len(self.ledger.runs()) > 1  # the ledger's earlier runs wrote them
        for name in names:
            self.job.dst.remove_temps(name)  # a run killed while writing its reports
            if (self.ledger.output_state(name) is None and not earlier
                    and self.job.dst.exists(name)):
                raise UsageError(f"{self.job.dst.child(name)} exists and was not written by "
                                 "datamill, which writes its report there; move it away or "
                                 "choose another DST")
        self.ledger.add_outputs(names, self.run_id)

    def _retrying(self, error_class: str | None) -> bool:
        rf = self.opts.retry_failed
        if isinstance(rf, bool):
            return rf
        return any(self.job.retry_matches(c, error_class) for c in rf)

    # -- the loop ----------------------------------------------------------------------------
    def run(self, executor: Executor) -> RunReport:
        with self.interrupts:
            try:
                self._start()
            except BaseException:
                executor.shutdown(cancel=True)
                raise
            return self._run(executor)

    def _run(self, executor: Executor) -> RunReport:
        started = time.time()
        self.progress = Progress(f"datamill {self.job.name}", total=None, quiet=self.opts.quiet,
                                 interval=self.opts.progress_interval, unit=self.job.unit)
        self.progress.note = self.job.progress_note
        if self.opts.limit is None:  # the total gives the ETA and sizes the last tasks
            threading.Thread(target=self._count, name="datamill-count", daemon=True).start()
        self.job.cores_per_worker = executor.cores_per_worker()
        self.job.workers = executor.workers
        self.sched = Scheduler(executor, self.job.runner(), self._source(),
                               retries=self.opts.retries,
                               timeout=self.job.task_timeout(self.opts.timeout),
                               batch_size=self.job.batch_size,
                               task_seconds=self.job.task_seconds,
                               max_batch=self.job.max_batch, on_idle=self._at_end,
                               align=self.job.align if self.job.aligned else None,
                               unread=self._unread,
                               cost=self.job.cost if self.job.costed else None,
                               first_task_id=self.ledger.next_task_id,
                               on_start=lambda: self._check_nodes(executor),
                               on_poll=self._on_poll, on_submit=self._on_submit,
                               on_task_end=self._on_task_end)
        self.sched.renumber_taken = not self.job.outputs_per_item
        for payload in self.job.after_commit(None, self.ledger):  # left by an earlier run
            self.sched.add_side(payload, functools.partial(self._side_done, payload))
        status, message = "completed", ""
        try:
            for result in self._results():
                self._handle(result, watch=True)
        except KeyboardInterrupt:
            status = "interrupted"
            message = "interrupted: what finished is saved; run the same command again to resume"
            self._drain()
        except SystemicFailure as exc:
            status, message = "stopped", f"stopped: {exc}"
            self._drain()  # failures while draining join the window, forgotten below
            self._safely(lambda: self.ledger.forget(k for _, k, _ in self.window))
        except WorkerInitError as exc:
            status, message = "stopped", f"stopped: {exc}"
        except (OSError, sqlite3.Error) as exc:
            if not _disk_full(exc):
                raise
            status, message = "stopped", self._disk_full_message(exc)
            self._drain()
        finally:
            self.sched.close()
            self.progress.close()
        # the executor is shut down: tasks that never reported are lost, and so is what
        # they wrote
        status, message = self._safely(
            lambda: self._remove_outputs(self.ledger.outputs(state=PENDING)), status, message)
        status, message = self._safely(self.ledger.flush, status, message)
        if status == "completed" and self.input_error:
            status, message = "stopped", (f"stopped: {self.input_error}; what was read is done "
                                          "and recorded: fix the input and run again to resume")
        if status == "completed" and self.interrupts.count:
            status, message = "interrupted", ("interrupted: what finished is saved; run the "
                                              "same command again to resume")
        if status == "completed":
            status, message = self._safely(lambda: self.job.finish(self.ledger, self.opts.quiet),
                                           status, message)
        return self._finalize(started, status, message)

    def _results(self) -> Iterator[Result]:
        yield from self.sched
        for it in self.item_errors:  # items that failed before running (a bad file name)
            self.meta[it.key] = it
            cls, msg = it.error
            yield Result(it.key, it.payload, failed(cls, msg, type_="InputError"), attempts=0)
        self.item_errors.clear()

    def _unread(self) -> int | None:
        """Items of the input not read yet, once the count beside the run is known."""
        return None if self.total is None else max(0, self.total - self.read)

    def _count(self) -> None:
        """Count the input beside the run (a list's lines, a tree walked ahead) for the ETA."""
        try:
            total = self.job.count()
        except Exception:  # noqa: BLE001 - no total is only no ETA
            return
        if total is not None and self.progress is not None:
            self.total = total
            self.progress.set_total(total)

    def _on_poll(self) -> None:
        self.interrupts.check()
        self.progress.tick(self.sched.executor.in_progress(),
                           self.sched.executor.outcomes_so_far())

    def _safely(self, step: Any, status: str = "completed", message: str = "") -> tuple[str, str]:
        """Run a step of the end; a full disk stops the job with the cause instead of a
        traceback (the next run resumes: what is not recorded is redone)."""
        try:
            step()
        except KeyboardInterrupt:
            self.interrupts.count += 1
            return "interrupted", ("interrupted: what finished is saved; run the same command "
                                   "again to resume")
        except (OSError, sqlite3.Error) as exc:
            if not _disk_full(exc):
                raise
            return "stopped", self._disk_full_message(exc)
        return status, message

    def _disk_full_message(self, exc: BaseException) -> str:
        return (f"stopped: the disk is full ({exc}; DST {self.job.dst}, ledger "
                f"{self.ledger.path}); free some space and run the same command again to resume")

    def _check_nodes(self, executor: Executor) -> None:
        """Workers write DST themselves: a local path must be the same folder for each of them
        (an executor whose workers may run on other machines warns about it)."""
        if not self.job.dst.is_remote:
            executor.check_shared_path(str(self.job.dst))

    def _drain(self) -> None:
        try:
            for result in self.sched.drain(self.opts.grace):
                self._handle(result, watch=False)
        except KeyboardInterrupt:  # a second Ctrl-C: stop waiting
            self.sched.executor.shutdown(cancel=True)

    def _handle(self, r: Result, watch: bool) -> None:
        if r.task_id is not None and r.task_id != self.last_task:
            self.last_task = r.task_id
            fault("commit")  # a task's results came back, before they are recorded
        it = self.meta.pop(r.key)
        o = r.outcome
        status, reason = o.status, o.reason
        records = o.records if o.records is not None or status == OK else (
            [it.columns] if it.columns else None)
        if reason != "disk_full":  # not the item's fault: the next run redoes it
            self.ledger.record_row(
                it.key, it.stage, status, reason, o.error_type or None, o.message or None,
                o.traceback or None, r.attempts, it.source, it.size, it.mtime, records,
                r.seconds, self.run_id, r.task_id, it.parent)
            if it.parent is None and self._item_ended is not None:
                self._item_ended(it.key, it.payload, status, False)
        if status == OK and it.stage != self.job.final_stage:
            follow = list(self._fresh(self._expand(it, o.records)))
            for f in follow:
                self.meta[f.key] = f
            self.sched.add((f.key, f.payload) for f in follow)
            self._opened(it, OK, len(follow), now=True)
        if not (status == OK and it.parent is None and it.stage != self.job.final_stage):
            self._closed(it, status, reason)
        if status == FAILED:
            self._watch(it, reason, r, stop=watch)
        else:
            self.outcomes_seen += 1

    def _watch(self, it: Item, reason: str | None, r: Result, stop: bool) -> None:
        """Keep the recent failures; raise SystemicFailure when the job should stop."""
        self.outcomes_seen += 1
        window = self.window
        window.append((self.outcomes_seen, it.key, reason))
        while window[0][0] <= self.outcomes_seen - self.opts.failure_window:
            window.popleft()
        if not stop:
            return
        if reason == "disk_full":
            raise SystemicFailure(f"the disk is full ({r.error.message if r.error else ''}); "
                                  "free some space and run the same command again")
        if self.job.source_gone():
            raise SystemicFailure(f"SRC {self.job.src} disappeared; when it is back, run the "
                                  "same command again")
        n = min(self.outcomes_seen, self.opts.failure_window)
        if n >= self.opts.failure_window and len(window) >= self.opts.failure_ratio * n:
            top = Counter(c for _, _, c in window).most_common(1)[0][0]
            raise SystemicFailure(
                f"{len(window)} of the last {n} items failed, most with {top} "
                f"(e.g. {r.error.message if r.error else reason}); fix the cause and run the "
                "same command again to resume")

    # -- the end -----------------------------------------------------------------------------
    def _finalize(self, started: float, status: str, message: str) -> RunReport:
        job, ledger, dst = self.job, self.ledger, self.job.dst
        wall = time.time() - started
        done_now = self.progress.done  # the input's items (videos, not their clip ranges)
        run_stats = {
            "status": status, "seconds": round(wall, 3), "items": done_now,
            "items_per_second": round(done_now / wall, 3) if wall > 0 else None,
            "outcomes": dict(self.progress.counts), "skipped_done": self.skipped_done,
            "skipped_failed": self.skipped_failed, "executor": self.opts.executor,
            "workers": self.sched.executor.workers if self.sched else None,
        }
        stats: dict[str, Any] = {"job": job.name, "src": str(job.src), "dst": str(dst),
                                 "counts": {}, "this_run": run_stats}
        extra: list[str] = []
        n_failed = 0

        def end() -> None:
            nonlocal stats, extra, n_failed
            if status == "completed" and self.read_all:
                ledger.set_meta("gone", self.top_before - self.found_top)
            counts = ledger.top_level_outcomes()
            ledger.end_run(self.run_id, status, run_stats)
            n_manifest = write_manifest(ledger, dst, job.manifest_fields, job.final_stage)
            fault("reports")
            n_failed = write_failures(ledger, dst)
            job.reports(ledger)
            stats = {
                "job": job.name, "src": str(job.src), "dst": str(dst),
                "counts": {s: counts.get(s, 0) for s in (OK, FILTERED, FAILED)},
                "gone": ledger.get_meta("gone", 0),
                "failures": ledger.failure_classes(), "filtered": ledger.filter_reasons(),
                "manifest_rows": n_manifest, "options": job.options(), "this_run": run_stats,
                "runs": [{k: r[k] for k in ("id", "started", "ended", "status")} | {
                    "stats": json.loads(r["stats"]) if r["stats"] else None}
                    for r in ledger.runs()],
            }
            extra = job.summary_lines(ledger)
            write_stats(dst, stats)

        ended: list[bool] = []
        final, final_message = self._safely(lambda: (end(), ended.append(True)), status, message)
        if not ended and final == "stopped":
            # the disk is full: free the space kept for this, and close the run and its
            # reports with it (else the next run marks this one interrupted)
            status, message = "stopped", final_message
            run_stats["status"] = status
            self._release_reserve()
            self._safely(end)
        elif final != status:
            status, message = final, final_message
            run_stats["status"] = status
        if status == "interrupted":
            code = EXIT_INTERRUPTED
        else:
            code = EXIT_FAILED if n_failed or status == "stopped" else EXIT_OK
        if not self.opts.quiet:
            print(_summary(job, stats, run_stats, extra, message, n_failed, self.notes),
                  flush=True)
        return RunReport(code, stats["counts"], stats, dst.location, message)

    def _release_reserve(self) -> None:
        """Free the space kept in the state folder for closing a run on a full disk."""
        try:
            (self.ledger.path.parent / RESERVE).unlink()
        except OSError:
            pass


def _summary(job: Job, stats: dict, run: dict, extra: list[str], message: str,
             n_failed: int, notes: list[str] = ()) -> str:
    lines = [f"datamill {job.name}: {run['status']} in {run['seconds']:.1f} s; this run "
             f"{run['items']} {job.unit}s ({run['items_per_second'] or 0:.1f}/s)"
             + (f", {run['skipped_done']} already done" if run["skipped_done"] else "")]
    lines += ["  " + n for n in notes]
    if not stats["counts"]:  # the reports could not be written
        if message:
            lines.append("  " + message)
        return "\n".join(lines)
    c = stats["counts"]
    lines.append(f"  whole job ({job.unit}s): ok {c['ok']}, filtered {c['filtered']}, failed {c['failed']}"
                 + (f", gone {stats['gone']}" if stats.get("gone") else ""))
    if stats.get("gone"):
        lines.append(f"  gone: {stats['gone']} {job.unit}s of earlier runs are no longer in the "
                     "input; their outputs stay (--overwrite starts from a clean slate)")
    if stats["filtered"]:
        lines.append("  filtered: " + ", ".join(f"{k} {v}" for k, v in stats["filtered"].items()))
    if stats["failures"]:
        lines.append("  failures: " + ", ".join(f"{k} {v}" for k, v in
                                                  list(stats["failures"].items())[:6]))
    lines += ["  " + x for x in extra]
    lines.append(f"  outputs in {job.dst}: manifest.parquet, failures.jsonl, stats.json")
    if n_failed:
        lines.append(f"  {n_failed} failed: details in {job.dst.child('failures.jsonl')}; "
                     "run again with --retry-failed to retry them")
    if message:
        lines.append("  " + message)
    return "\n".join(lines)


def _dry_run(job: Job, opts: RunOptions) -> RunReport:
    """Say what a run would do, writing nothing (the ledger, if any, is opened read-only)."""
    path = job.state_dir / LEDGER_FILE
    ledger = Ledger(path, readonly=True) if path.is_file() else None
    try:
        if ledger is not None:
            check_fingerprint(ledger, job, opts.overwrite)
        run = _Run(job, opts, ledger if ledger is not None and not opts.overwrite
                   else Ledger.empty())
        run.dry = True
        todo = sum(1 for _ in run._source()) + len(run.item_errors)
        counts = ledger.top_level_outcomes() if ledger is not None else {}
    finally:
        if ledger is not None:
            ledger.close()
    msg = (f"datamill {job.name} (dry run): {todo} {job.unit}s to do, {run.skipped_done} "
           f"already done, {run.skipped_failed} failed before (not retried without "
           "--retry-failed); nothing was written")
    if not opts.quiet:
        print(msg)
    return RunReport(EXIT_OK, counts, {}, job.dst.location, msg)
