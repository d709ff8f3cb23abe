"""The run loop every job goes through.

source -> skip what the ledger says is done -> scheduler/executor -> ledger and outputs ->
progress -> reports and a summary.  Stops early, with the cause, on systemic failure; on
Ctrl-C stops submitting, collects what finishes within a few seconds, saves, exits 130.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import signal
import sqlite3
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Iterable, Iterator

from .errors import SystemicFailure, UsageError
from .executor import Executor, WorkerInitError, get_executor
from .job import Item, Job
from .ledger import Ledger
from .progress import Progress
from .reports import write_failures, write_manifest, write_stats
from .scheduler import Result, Scheduler
from .storage import Dst, state_dir_for
from .task import FAILED, FILTERED, OK

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
log = logging.getLogger("datamill")


@dataclass
class RunOptions:
    """Options of the engine that every job takes; none of them changes per-item results."""

    workers: int | None = None
    executor: str = "local"
    quiet: bool = False
    overwrite: bool = False
    retry_failed: bool | Collection[str] = False  # True: every class; else these classes
    limit: int | None = None
    dry_run: bool = False
    timeout: float | None = None  # seconds per item
    retries: int = 1
    failure_window: int = 1000
    failure_ratio: float = 0.95
    progress_interval: float = 10.0
    grace: float = 5.0
    ray_address: str | None = None
    cpus_per_task: float | None = None
    state_dir: str | os.PathLike | None = None  # the ledger's folder (default: see storage.py)
    argv: list[str] = field(default_factory=list)


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


def state_path(dst: str | os.PathLike | Dst, state_dir: str | os.PathLike | None = None) -> Path:
    """The ledger of the job in `dst`: DST/_datamill/state.sqlite for a local DST, else in
    `state_dir` or the default state folder of a URL (engine/storage.py)."""
    return state_dir_for(Dst(dst), state_dir) / "state.sqlite"


def run_job(job: Job, opts: RunOptions | None = None) -> RunReport:
    """Run `job` to completion (or to a stop); raises UsageError for a bad request."""
    opts = opts or RunOptions()
    job.state_dir = state_dir_for(job.dst, opts.state_dir)
    job.validate()
    executor = None if opts.dry_run else make_executor(opts)
    ledger = open_ledger(job)
    try:
        check_fingerprint(ledger, job, opts.overwrite)
        if executor is None:
            return _dry_run(job, opts, ledger)
        return _Run(job, opts, ledger).run(executor)
    finally:
        ledger.close()


def make_executor(opts: RunOptions) -> Executor:
    """The executor the options ask for; a missing optional dependency is a usage error."""
    extra: dict[str, Any] = {}
    if opts.ray_address:
        extra["address"] = opts.ray_address
    if opts.cpus_per_task is not None:
        extra["cpus_per_task"] = opts.cpus_per_task
    if extra and opts.executor != "ray":
        raise UsageError("--ray-address and --cpus-per-task go with --executor ray")
    try:
        return get_executor(opts.executor, opts.workers, **extra)
    except ImportError as exc:
        raise UsageError(str(exc)) from exc


def open_ledger(job: Job) -> Ledger:
    """The job's ledger in its state folder.  A state folder outside DST remembers its DST:
    using it for another DST would skip items whose outputs are not there."""
    path = job.state_dir / "state.sqlite"
    try:
        ledger = Ledger(path)
    except (OSError, sqlite3.Error) as exc:
        raise UsageError(f"the state folder {job.state_dir} is not writable ({exc}); choose "
                         "another with --state-dir") from exc
    if job.dst.path is not None and job.state_dir == job.dst.path / "_datamill":
        return ledger  # travels with DST (a moved folder keeps its ledger)
    owner = ledger.get_meta("dst")
    if owner not in (None, job.dst.url):
        ledger.close()
        raise UsageError(f"the state folder {job.state_dir} holds the ledger of DST {owner}, "
                         f"not {job.dst}; give each DST its own --state-dir")
    ledger.set_meta("dst", job.dst.url)
    return ledger


def check_fingerprint(ledger: Ledger, job: Job, overwrite: bool) -> None:
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
    if old is not None and old != new:
        ledger.clear()
    ledger.set_meta("job", job.name)
    ledger.set_meta("fingerprint", new)
    ledger.set_meta("options", json.loads(json.dumps(job.options(), default=str)))


def _chunks(iterable: Iterable[Any], n: int) -> Iterator[list]:
    it = iter(iterable)
    while chunk := list(itertools.islice(it, n)):
        yield chunk


class _Run:
    def __init__(self, job: Job, opts: RunOptions, ledger: Ledger):
        self.job, self.opts, self.ledger = job, opts, ledger
        self.meta: dict[str, Item] = {}
        self.skipped_done = 0
        self.skipped_failed = 0
        self.window: deque[tuple[str, str | None]] = deque()  # (key, error class or None)
        self.window_failed = 0
        self.this_run: Counter[str] = Counter()
        self.sched: Scheduler | None = None
        self.progress: Progress | None = None

    # -- what to run -----------------------------------------------------------------------
    def _source(self) -> Iterator[tuple[str, Any]]:
        items: Iterable[Item] = self.job.items()
        if self.opts.limit is not None:
            items = itertools.islice(items, self.opts.limit)
        for chunk in _chunks(items, 256):
            for it in self._fresh(chunk):
                self.meta[it.key] = it
                yield it.key, it.payload

    def _fresh(self, items: list[Item]) -> Iterator[Item]:
        """The items not done yet; a finished plan still yields its unfinished parts."""
        states = self.ledger.lookup([it.key for it in items])
        for it in items:
            st = states.get(it.key)
            if st is not None and st.same_source(it.size, it.mtime):
                if st.status in (OK, FILTERED):
                    self.skipped_done += 1
                    if st.status == OK and it.stage != self.job.final_stage:
                        yield from self._fresh(list(self.job.expand(it, json.loads(st.records))))
                    continue
                if not self._retrying(st.reason):
                    self.skipped_failed += 1
                    continue
            yield it

    def _retrying(self, error_class: str | None) -> bool:
        rf = self.opts.retry_failed
        if isinstance(rf, bool):
            return rf
        return any(error_class == c or (c.endswith("_5xx") and (error_class or "").startswith("http_5"))
                   for c in rf)

    # -- the loop ----------------------------------------------------------------------------
    def run(self, executor: Executor) -> RunReport:
        run_id = self.ledger.begin_run(self.opts.argv or sys.argv)
        self.job.prepare(self.ledger)
        started = time.time()
        self.progress = Progress(f"datamill {self.job.name}", total=None, quiet=self.opts.quiet,
                                 interval=self.opts.progress_interval, unit=self.job.unit)
        self.job.cores_per_worker = executor.cores_per_worker()
        self.sched = Scheduler(executor, self.job.runner(), self._source(),
                               retries=self.opts.retries,
                               timeout=self.job.task_timeout(self.opts.timeout),
                               batch_size=self.job.batch_size,
                               task_seconds=self.job.task_seconds,
                               first_task_id=self.ledger.next_task_id,
                               on_start=lambda: self._check_nodes(executor),
                               on_poll=lambda: self.progress.tick(executor.in_progress(),
                                                                  executor.outcomes_so_far()))
        status, message = "completed", ""
        previous = _sigterm_as_interrupt()
        try:
            try:
                for result in self.sched:
                    self._handle(result, watch=True)
            except KeyboardInterrupt:
                status = "interrupted"
                message = ("interrupted: what finished is saved; run the same command again "
                           "to resume")
                self._drain()
            except SystemicFailure as exc:
                status, message = "stopped", f"stopped: {exc}"
                self._drain()  # failures while draining join the window, forgotten below
                self.ledger.forget(k for k, reason in self.window if reason is not None)
            except WorkerInitError as exc:
                status, message = "stopped", f"stopped: {exc}"
            except OSError as exc:  # reading the input itself failed
                status, message = "stopped", f"stopped: reading the input failed: {exc}"
                self._drain()
            finally:
                self.sched.close()
                self.progress.close()
            self.ledger.flush()
            if status == "completed":
                self.job.finish(self.ledger, self.opts.quiet)
        finally:
            _restore_sigterm(previous)
        return self._finalize(run_id, started, status, message)

    def _check_nodes(self, executor: Executor) -> None:
        """Workers on several machines write DST themselves: a local path must be one folder
        that every machine mounts at the same path."""
        nodes = executor.nodes()
        if nodes > 1 and not self.job.dst.is_remote:
            log.warning(
                "warning: the Ray cluster has %d nodes and DST %s is a local path: every node "
                "writes its outputs there, so it must be a shared filesystem mounted at the "
                "same path on every node (else outputs end up scattered over the nodes' disks); "
                "or give an fsspec URL (s3://bucket/prefix) as DST", nodes, self.job.dst)

    def _drain(self) -> None:
        try:
            for result in self.sched.drain(self.opts.grace):
                self._handle(result, watch=False)
        except KeyboardInterrupt:  # a second Ctrl-C: stop waiting
            self.sched.executor.shutdown(cancel=True)

    def _handle(self, r: Result, watch: bool) -> None:
        self.ledger.next_task_id = self.sched.next_task_id
        it = self.meta.pop(r.key)
        common = dict(attempts=r.attempts, source=it.source, size=it.size, mtime=it.mtime,
                      seconds=r.seconds)
        if r.status == OK:
            status, reason, message = self.job.judge(r.value)
            self.ledger.record(it.key, it.stage, status, reason, message=message,
                               records=r.value, **common)
            if status == OK and it.stage != self.job.final_stage:
                follow = list(self._fresh(list(self.job.expand(it, r.value))))
                for f in follow:
                    self.meta[f.key] = f
                self.sched.add((f.key, f.payload) for f in follow)
        elif r.status == FILTERED:
            status, reason = FILTERED, r.reason
            self.ledger.record(it.key, it.stage, FILTERED, r.reason, message=r.error, **common)
        else:
            status, reason, e = FAILED, r.reason, r.error
            self.ledger.record(it.key, it.stage, FAILED, e.error_class, error_type=e.type,
                               message=e.message, traceback=e.traceback, **common)
        self.this_run[status] += 1
        self.progress.update(status, reason)
        self._watch(it, status, reason, r, stop=watch)

    def _watch(self, it: Item, status: str, reason: str | None, r: Result, stop: bool) -> None:
        """Keep the recent outcomes; raise SystemicFailure when the job should stop."""
        failed = status == FAILED
        self.window.append((it.key, reason if failed else None))
        self.window_failed += failed
        if len(self.window) > self.opts.failure_window:
            self.window_failed -= self.window.popleft()[1] is not None
        if not failed or not stop:
            return
        if reason == "disk_full":
            raise SystemicFailure(f"the disk is full ({r.error.message if r.error else ''}); "
                                  "free some space and run the same command again")
        if self.job.source_gone():
            raise SystemicFailure(f"SRC {self.job.src} disappeared; when it is back, run the "
                                  "same command again")
        n = len(self.window)
        if n >= self.opts.failure_window and self.window_failed >= self.opts.failure_ratio * n:
            top = Counter(c for _, c in self.window if c is not None).most_common(1)[0][0]
            raise SystemicFailure(
                f"{self.window_failed} of the last {n} items failed, most with {top} "
                f"(e.g. {r.error.message if r.error else reason}); fix the cause and run the "
                "same command again to resume")

    # -- the end -----------------------------------------------------------------------------
    def _finalize(self, run_id: int, started: float, status: str, message: str) -> RunReport:
        job, ledger, dst = self.job, self.ledger, self.job.dst
        counts = ledger.counts()
        wall = time.time() - started
        done_now = sum(self.this_run.values())
        run_stats = {
            "status": status, "seconds": round(wall, 3), "items": done_now,
            "items_per_second": round(done_now / wall, 3) if wall > 0 else None,
            "outcomes": dict(self.this_run), "skipped_done": self.skipped_done,
            "skipped_failed": self.skipped_failed, "executor": self.opts.executor,
            "workers": self.sched.executor.workers if self.sched else None,
        }
        ledger.end_run(run_id, status, run_stats)
        n_manifest = write_manifest(ledger, dst, job.manifest_fields, job.final_stage)
        n_failed = write_failures(ledger, dst)
        job.reports(ledger)
        stats = {
            "job": job.name, "src": str(job.src), "dst": str(dst),
            "counts": {s: counts.get(s, 0) for s in (OK, FILTERED, FAILED)},
            "failures": ledger.failure_classes(), "filtered": ledger.filter_reasons(),
            "manifest_rows": n_manifest, "options": job.options(), "this_run": run_stats,
            "runs": [{k: r[k] for k in ("id", "started", "ended", "status")} | {
                "stats": json.loads(r["stats"]) if r["stats"] else None} for r in ledger.runs()],
        }
        extra = job.summary_lines(ledger)
        write_stats(dst, stats)
        if status == "interrupted":
            code = EXIT_INTERRUPTED
        else:
            code = EXIT_FAILED if n_failed or status == "stopped" else EXIT_OK
        if not self.opts.quiet:
            print(_summary(job, stats, run_stats, extra, message, n_failed), flush=True)
        return RunReport(code, stats["counts"], stats, dst.location, message)


def _summary(job: Job, stats: dict, run: dict, extra: list[str], message: str,
             n_failed: int) -> str:
    c = stats["counts"]
    lines = [f"datamill {job.name}: {run['status']} in {run['seconds']:.1f} s; this run "
             f"{run['items']} {job.unit}s ({run['items_per_second'] or 0:.1f}/s)"
             + (f", {run['skipped_done']} already done" if run["skipped_done"] else "")]
    lines.append(f"  whole job ({job.unit}s): ok {c['ok']}, filtered {c['filtered']}, failed {c['failed']}")
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


def _dry_run(job: Job, opts: RunOptions, ledger: Ledger) -> RunReport:
    run = _Run(job, opts, ledger)
    todo = sum(1 for _ in run._source())
    msg = (f"datamill {job.name} (dry run): {todo} {job.unit}s to do, {run.skipped_done} "
           f"already done, {run.skipped_failed} failed before (not retried without "
           "--retry-failed); nothing was written")
    if not opts.quiet:
        print(msg)
    return RunReport(EXIT_OK, ledger.counts(), {}, job.dst.location, msg)


def _sigterm_as_interrupt() -> Any:
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt
    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        return signal.getsignal(signal.SIGTERM)


def _restore_sigterm(previous: Any) -> None:
    try:
        signal.signal(signal.SIGTERM, previous)
    except (ValueError, TypeError):
        pass
