"""What crosses between the driver and the workers: tasks, per-item outcomes, crashes.

The driver groups items into tasks; a worker runs a task with `TaskRunner.run` and returns
one `Outcome` per item.  Exceptions of single items are caught in the worker and become
data; only the death of a whole worker (or its deadline) is seen by the driver as a `Crash`.
"""
from __future__ import annotations

import errno
import functools
import time
import traceback as tb
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

from ..errors import Filtered, ItemError
from .fault import fault

if TYPE_CHECKING:
    from .executors.base import WorkerStatus

OK, FILTERED, FAILED = "ok", "filtered", "failed"

# Exceptions that will fail the same way on every attempt.
_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
              TypeError, AttributeError, NameError, ImportError, RecursionError)


@dataclass(slots=True)
class Outcome:
    """How one item ended: the one type that travels from the worker to the ledger.

    `status` is ok, filtered or failed; `records` what the item produced (a failed item may
    keep the records of what it did write: the clips before a damaged frame); `reason` the
    filter reason or the short, stable error class; `message`, `traceback` and `error_type`
    describe a failure; `retryable` says whether another attempt may pass.
    """

    status: str
    records: Any = None
    reason: str | None = None
    message: str = ""
    traceback: str = ""
    error_type: str = ""
    retryable: bool = False

    @property
    def error_class(self) -> str | None:
        return self.reason if self.status == FAILED else None

    @property
    def type(self) -> str:
        """The exception's type name (pmap users read `result.error.type`)."""
        return self.error_type

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}" if self.reason else self.status


def failed_with(exc: BaseException) -> Outcome:
    """The outcome of an item that raised `exc`: filtered for `Filtered`; else failed with a
    class (ItemError's own, disk_full, dst_exists, not_found, ... or the exception's name),
    retryable unless the error will fail the same way again."""
    if isinstance(exc, Filtered):
        return Outcome(FILTERED, reason=exc.reason, message=str(exc))
    trace = "".join(tb.format_exception(type(exc), exc, exc.__traceback__))
    if isinstance(exc, ItemError):
        cls, retry = exc.error_class, exc.retryable
    elif isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        cls, retry = "disk_full", False
    elif isinstance(exc, FileExistsError):
        cls, retry = "dst_exists", False
    elif isinstance(exc, FileNotFoundError):
        cls, retry = "not_found", False
    elif isinstance(exc, PermissionError):
        cls, retry = "permission_denied", False
    elif isinstance(exc, MemoryError):
        cls, retry = "out_of_memory", True
    elif isinstance(exc, TimeoutError):
        cls, retry = "timeout", True
    else:
        cls, retry = type(exc).__name__, not isinstance(exc, _PERMANENT)
    return Outcome(FAILED, reason=cls, message=str(exc), traceback=trace,
                   error_type=type(exc).__name__, retryable=retry)


@dataclass(slots=True)
class Crash:
    """A task lost as a whole: its worker died, or it ran past its deadline.

    `culprit` is the index (within the task) of the item that was running, when known;
    `started` is False for a task that was queued on the worker but never begun.
    """

    reason: str  # "worker_died" | "timeout"
    message: str
    culprit: int | None = None
    started: bool = True


@dataclass(slots=True)
class Done:
    """A task that came back from an executor: either its per-item results or a crash."""

    task_id: int
    results: list[Outcome] | None = None  # one per item
    seconds: float = 0.0
    crash: Crash | None = None


class TaskRunner:
    """Runs a task inside a worker; exceptions of single items become per-item data.

    Either `fn(payload)` is called for each item (it returns the item's records, or an
    `Outcome` when it must say more: a failed item that keeps what it wrote), or
    `batch_fn(task, payloads)` once for the whole task (a job that writes one shard per task,
    or fetches its items concurrently); it returns one `Outcome` per item, made with `ok`,
    `filtered`, `failed` or `failed_with`, and may call
    `task.advance()` as items finish so progress moves during long tasks.  `task.id` is unique
    within a job folder, across runs, so it can name shards.

    Or `stream_fn(tasks)` (a `TaskStream`): one call serves a worker's tasks, several at once,
    each finished with `tasks.done(task, results)` when its own items are (a download whose
    next shard starts while the last URLs of the current one run).  The local executor calls
    it once per worker; elsewhere (serial, ray) it is called once per task, with a stream of
    that task alone.

    `initializer(*initargs)` runs once per worker process before its first task (load a model,
    open a resource).  With `status` (its worker's `WorkerStatus`, engine/executors/base.py)
    the runner publishes which item it is on and since when, so the driver can enforce
    deadlines and name the item that killed a worker (a batch publishes -1: the item is not
    known).
    """

    def __init__(self, fn: Callable[[Any], Any] | None = None,
                 initializer: Callable[..., Any] | None = None, initargs: Sequence[Any] = (),
                 *, batch_fn: Callable[["TaskContext", list], list] | None = None,
                 stream_fn: Callable[["TaskStream"], None] | None = None):
        if sum(f is not None for f in (fn, batch_fn, stream_fn)) != 1:
            raise ValueError("give one of fn, batch_fn or stream_fn")
        self.fn = fn
        self.stream_fn = stream_fn
        self.batch_fn = batch_fn if stream_fn is None else functools.partial(_one_task, stream_fn)
        self.initializer = initializer
        self.initargs = tuple(initargs)

    def initialize(self) -> None:
        if self.initializer is not None:
            self.initializer(*self.initargs)

    def run(self, payloads: Sequence[Any], task_id: int = 0,
            status: WorkerStatus | None = None) -> list:
        out = self._run(payloads, task_id, status)
        fault("task-end")
        return out

    def _run(self, payloads: Sequence[Any], task_id: int, status: WorkerStatus | None) -> list:
        if self.batch_fn is not None:
            return self._run_batch(list(payloads), task_id, status)
        fn = self.fn
        out = []
        append = out.append
        for i, payload in enumerate(payloads):
            if status is not None:
                status.begin_item(i)
            try:
                value = fn(payload)
                append(value if isinstance(value, Outcome) else Outcome(OK, value))
            except Exception as exc:  # noqa: BLE001 - every item failure is data
                append(failed_with(exc))
        return out

    def _run_batch(self, payloads: list, task_id: int, status: WorkerStatus | None) -> list:
        if status is not None:
            status.begin_item(-1)
        try:
            results = list(self.batch_fn(TaskContext(task_id, status), payloads))
            if len(results) != len(payloads):
                raise RuntimeError(f"batch function returned {len(results)} results for "
                                   f"{len(payloads)} items")
            return results
        except Exception as exc:  # noqa: BLE001 - the whole task failed: every item says why
            return [failed_with(exc)] * len(payloads)


class TaskContext:
    """What a batch function knows of its task: its id, and a way to report progress.

    `current` is False for a task a stream runs beside its worker's oldest one: its progress
    counts in the outcomes but not in the status of the task the driver watches."""

    __slots__ = ("id", "_status", "done", "current", "started")

    def __init__(self, task_id: int, status: WorkerStatus | None = None, current: bool = True):
        self.id = task_id
        self._status = status
        self.done = 0
        self.current = current
        self.started = time.monotonic()

    def start(self, index: int) -> None:
        """Say that item `index` of the task runs now: a crash or a deadline then costs that
        item alone (as with a per-item `fn`), not the whole task."""
        if self._status is not None and self.current:
            self._status.begin_item(index)

    def advance(self, n: int = 1, outcome: str | None = None, nbytes: int = 0) -> None:
        """`n` more items of the task are done; `outcome` ("ok", "filtered", "failed") and
        `nbytes` let the progress line show the success rate and MB/s as they happen."""
        self.done += n
        if self._status is not None:
            if self.current:
                self._status.set_done(self.done)
            if outcome is not None:
                self._status.add_outcomes(outcome == OK, n, nbytes)


class TaskStream:
    """The tasks of one worker, for a runner that overlaps them (`TaskRunner(stream_fn=...)`).

    `next()` blocks until the worker's next task, (TaskContext, payloads), and returns None
    when there are no more (the stream function then finishes the tasks it holds and
    returns).  Asking while tasks are still open tells the driver that this worker can take
    one more now.  `done(task, results)` sends a task's outcomes (one per item) as soon as
    its own items are finished, in any order.  `next` may be called from another thread
    than `done`.

        def serve(tasks):                       # one task at a time, as batch_fn would
            while (task := tasks.next()) is not None:
                ctx, payloads = task
                tasks.done(ctx, [ok(p) for p in payloads])
    """

    def next(self) -> tuple[TaskContext, list] | None:
        raise NotImplementedError

    def done(self, task: TaskContext, results: list) -> None:
        raise NotImplementedError


class _OneTask(TaskStream):
    """A stream of one task (executors that run a task per call: serial, ray)."""

    def __init__(self, task: TaskContext, payloads: list):
        self._task: tuple[TaskContext, list] | None = (task, payloads)
        self.results: list | None = None

    def next(self) -> tuple[TaskContext, list] | None:
        task, self._task = self._task, None
        return task

    def done(self, task: TaskContext, results: list) -> None:
        self.results = results


def _one_task(stream_fn: Callable[[TaskStream], None], task: TaskContext, payloads: list) -> list:
    stream = _OneTask(task, payloads)
    stream_fn(stream)
    if stream.results is None:
        raise RuntimeError("the stream function returned without finishing its task")
    return stream.results


def ok(records: Any) -> Outcome:
    """A batch function's result for an item that succeeded with `records`."""
    return Outcome(OK, records)


def filtered(reason: str, message: str = "") -> Outcome:
    return Outcome(FILTERED, reason=reason, message=message or reason)


def failed(error_class: str, message: str, *, retryable: bool = False, type_: str = "",
           traceback: str = "", records: Any = None) -> Outcome:
    return Outcome(FAILED, records, error_class, message, traceback, type_ or error_class,
                   retryable)


def picklable_results(results: list[Outcome], dumps: Callable[[Any], bytes]) -> list[Outcome]:
    """Replace each outcome whose records cannot be pickled by a failure that says so."""
    fixed = []
    for res in results:
        try:
            dumps(res)
            fixed.append(res)
        except Exception as exc:  # noqa: BLE001
            fixed.append(failed("unpicklable", f"the function's result cannot be pickled: {exc}",
                                type_=type(exc).__name__))
    return fixed


@dataclass(slots=True)
class WorkItem:
    """An item in the driver's hands: its key, what is sent to the worker, attempts so far."""

    key: Any
    payload: Any
    attempts: int = 0
    last_error: Outcome | None = field(default=None)
