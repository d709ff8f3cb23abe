"""The one interface every executor implements, and what executors share.

An executor runs tasks somewhere (this process, worker processes, a Ray cluster); the
scheduler decides what to run, how to batch, retry and split.  A new executor is one file
with one `Executor` subclass, added to the registry in `__init__.py`.  Its keyword-only
constructor parameters are its options (`get_executor("ray", address="auto")`); any other
option is a usage error that names it.

    ex = get_executor("local", workers=2)
    ex.start(TaskRunner(fn), timeout=30)
    ex.check_shared_path("/data/out")        # a local DST: warns unless every worker sees it
    while ex.free_slots():
        ex.submit(task_id, payloads)          # raises TaskEncodingError if unpicklable
    for done in ex.poll(0.5):                 # finished tasks, or crashes of whole tasks
        ...
    ex.shutdown(cancel=False)

Every executor implements the five abstract methods `start`, `free_slots`, `submit`, `poll`
and `shutdown`.  The other five have defaults, overridden where an executor can do better:
`set_prefetch` (how many tasks a worker may hold), `cores_per_worker` (for work that uses
threads), `in_progress` and `outcomes_so_far` (progress inside running tasks) and
`check_shared_path` (for workers on other machines).  The class method `create` builds an
executor from its options; `get_executor` calls it.
"""
from __future__ import annotations

import inspect
import os
import pickle
import time
from abc import ABC, abstractmethod
from typing import Any, Sequence

from ...errors import UsageError
from ..task import Done, TaskRunner, picklable_results

PREFETCH = 2  # tasks held by one worker for short tasks: one running, one ready to start


class TaskEncodingError(Exception):
    """A task could not be sent to a worker (its payload cannot be pickled)."""


class WorkerInitError(Exception):
    """The per-worker initializer failed: no worker can run, the job cannot go on."""


class Executor(ABC):
    name = "executor"

    def __init__(self, workers: int | None = None):
        self.workers = max(1, workers or default_workers())
        self.prefetch = PREFETCH

    @classmethod
    def create(cls, workers: int | None = None, **options: Any) -> "Executor":
        """An executor of this kind with `options` (one given as None is not given); an
        option it does not take is a UsageError naming it."""
        options = {k: v for k, v in options.items() if v is not None}
        params = inspect.signature(cls.__init__).parameters.values()
        takes = [p.name for p in params if p.kind is p.KEYWORD_ONLY]
        unknown = sorted(set(options) - set(takes))
        if unknown:
            names = ", ".join(repr(n) for n in unknown)
            has = f"its options are {', '.join(takes)}" if takes else "it takes none"
            raise UsageError(f"the {cls.name} executor takes no option {names} ({has}); choose "
                             "the executor it goes with (--executor)")
        return cls(workers, **options)

    @abstractmethod
    def start(self, runner: TaskRunner, timeout: float | None = None) -> None:
        """Prepare to run tasks with `runner`; `timeout` is the deadline of one item, seconds."""

    @abstractmethod
    def free_slots(self) -> int:
        """How many more tasks may be submitted now (bounds the work in flight)."""

    @abstractmethod
    def submit(self, task_id: int, payloads: Sequence[Any]) -> None:
        """Queue one task; must not block for long."""

    @abstractmethod
    def poll(self, timeout: float) -> list[Done]:
        """Wait up to `timeout` seconds; return the tasks that finished or crashed."""

    @abstractmethod
    def shutdown(self, cancel: bool = False, grace: float = 0.0) -> list[Done]:
        """Stop.  With `cancel`, begin no new task, wait up to `grace` seconds for running
        ones and return what finished; the rest is abandoned."""

    def set_prefetch(self, tasks_per_worker: int) -> None:
        """How many tasks a worker may hold (running plus queued); a hint.  Queued tasks
        hide the driver's latency for short tasks but pin long ones to a worker before
        another is free: the scheduler asks for 1 when tasks are long."""
        self.prefetch = max(1, tasks_per_worker)

    def cores_per_worker(self) -> int:
        """Cores each worker has to itself, for work that can use threads (video codecs size
        their thread pools by it): this machine's cores shared among the workers, at least 1."""
        return max(1, (os.cpu_count() or 1) // self.workers)

    def in_progress(self) -> int:
        """Items finished inside tasks still running (batch runners report them); for progress."""
        return 0

    def outcomes_so_far(self) -> tuple[int, int, int] | None:
        """(succeeded, not succeeded, bytes) of the items batch runners reported with
        `TaskContext.advance(outcome=...)`, finished tasks or not; None when none did."""
        return None

    def check_shared_path(self, path: str) -> None:
        """Called after `start` with a local path the workers write outputs to themselves.
        Workers on this machine all see it; an executor whose workers may run on other
        machines warns that it must be one folder mounted at the same path everywhere."""


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def dumps(obj: Any) -> bytes:
    """Pickle what crosses to or from a worker."""
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def dumps_task(obj: Any) -> bytes:
    """Pickle a task for a worker; an item that cannot be pickled is a TaskEncodingError."""
    try:
        return dumps(obj)
    except Exception as exc:  # noqa: BLE001
        raise TaskEncodingError(f"cannot pickle the item: {exc}") from exc


def dumps_results(head: Any, results: list, seconds: float) -> bytes:
    """Pickle a finished task's results as (head, results, seconds) for the driver; a result
    that cannot be pickled becomes the failure of its item alone."""
    try:
        return dumps((head, results, seconds))
    except Exception:  # noqa: BLE001 - name the item whose result cannot be pickled
        return dumps((head, picklable_results(results, dumps), seconds))


class WorkerStatus:
    """One worker's place in an array of doubles shared with the driver: the worker (its
    `TaskRunner` and `TaskContext`) writes what it is doing, the driver reads it to enforce
    deadlines, name the item that killed a worker and show progress inside long tasks.

    Fields, `FIELDS` doubles per worker from `slot * FIELDS`:
      TASK   the task it runs (-1: none)
      ITEM   the index in that task of the item it is on (-1: a batch that does not say)
      SINCE  when that item (or batch) started, time.monotonic()
      DONE   items of the running task finished so far (batch runners report them)
      OK, OTHER, BYTES   over all its tasks, the items a batch runner reported as succeeded,
             as not succeeded, and their bytes
    """

    TASK, ITEM, SINCE, DONE, OK, OTHER, BYTES = range(7)
    FIELDS = 7
    INITIAL = (-1.0, -1.0, -1.0, -1.0, 0.0, 0.0, 0.0)

    __slots__ = ("array", "base")

    def __init__(self, array: Any, slot: int):
        self.array = array
        self.base = slot * self.FIELDS

    @classmethod
    def shared(cls, ctx: Any, workers: int) -> list["WorkerStatus"]:
        """A new array for `workers` workers in multiprocessing context `ctx`, one view each."""
        array = ctx.RawArray("d", list(cls.INITIAL) * workers)
        return [cls(array, slot) for slot in range(workers)]

    # -- written by the worker -------------------------------------------------------------
    def begin_task(self, task_id: int) -> None:
        self.array[self.base + self.DONE] = 0
        self.array[self.base + self.TASK] = task_id

    def end_task(self) -> None:
        self.array[self.base + self.TASK] = -1

    def resume_task(self, task_id: int, since: float, done: int) -> None:
        """A task that ran beside the one that just ended is now the one watched: it
        started at `since` and has `done` items finished (a stream runner's overlap)."""
        a, b = self.array, self.base
        a[b + self.DONE], a[b + self.ITEM], a[b + self.SINCE] = done, -1, since
        a[b + self.TASK] = task_id

    def begin_item(self, index: int) -> None:
        """Item `index` of the task runs from now (-1: the whole batch, no item named)."""
        array, base = self.array, self.base
        array[base + 1] = index  # ITEM (this runs once per item: no attribute look-ups)
        array[base + 2] = time.monotonic()  # SINCE

    def set_done(self, n: int) -> None:
        self.array[self.base + self.DONE] = n

    def add_outcomes(self, succeeded: bool, n: int, nbytes: int) -> None:
        self.array[self.base + (self.OK if succeeded else self.OTHER)] += n
        self.array[self.base + self.BYTES] += nbytes

    # -- read by the driver ----------------------------------------------------------------
    @property
    def task(self) -> int:
        return int(self.array[self.base + self.TASK])

    @property
    def item(self) -> int:
        return int(self.array[self.base + self.ITEM])

    @property
    def since(self) -> float:
        return self.array[self.base + self.SINCE]

    @property
    def done(self) -> int:
        return int(self.array[self.base + self.DONE])

    def outcomes(self) -> tuple[int, int, int]:
        """(succeeded, not succeeded, bytes) reported by this worker's batch runners."""
        b = self.base
        return (int(self.array[b + self.OK]), int(self.array[b + self.OTHER]),
                int(self.array[b + self.BYTES]))
