"""The one interface every executor implements, and how to get one by name.

An executor runs tasks somewhere (this process, worker processes, a Ray cluster); the
scheduler decides what to run, how to batch, retry and split.  A new executor is one file
with one class implementing these five methods:

    ex = get_executor("local", workers=2)
    ex.start(TaskRunner(fn), timeout=30)
    while ex.free_slots():
        ex.submit(task_id, payloads)          # raises TaskEncodingError if unpicklable
    for done in ex.poll(0.5):                 # finished tasks, or crashes of whole tasks
        ...
    ex.shutdown(cancel=False)
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Any, Sequence

from .task import Done, TaskRunner


class TaskEncodingError(Exception):
    """A task could not be sent to a worker (its payload cannot be pickled)."""


class WorkerInitError(Exception):
    """The per-worker initializer failed: no worker can run, the job cannot go on."""


class Executor(ABC):
    name = "executor"

    def __init__(self, workers: int | None = None):
        self.workers = max(1, workers or default_workers())

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

    def cores_per_worker(self) -> int:
        """Cores each worker has to itself, for work that can use threads (video codecs size
        their thread pools by it): this machine's cores shared among the workers, at least 1."""
        return max(1, (os.cpu_count() or 1) // self.workers)

    def set_prefetch(self, tasks_per_worker: int) -> None:
        """How many tasks a worker may hold (running plus queued); a hint, default ignored.
        Queued tasks hide the driver's latency for short tasks but pin long ones to a
        worker before another is free: the scheduler asks for 1 when tasks are long."""

    def nodes(self) -> int:
        """How many machines run tasks (after `start`); workers on several machines write
        outputs themselves, so their paths must mean the same folder everywhere."""
        return 1

    def in_progress(self) -> int:
        """Items finished inside tasks still running (batch runners report them); for progress."""
        return 0

    def outcomes_so_far(self) -> tuple[int, int, int] | None:
        """(succeeded, not succeeded, bytes) of the items batch runners reported with
        `TaskContext.advance(outcome=...)`, finished tasks or not; None when none did."""
        return None

    @abstractmethod
    def shutdown(self, cancel: bool = False, grace: float = 0.0) -> list[Done]:
        """Stop.  With `cancel`, begin no new task, wait up to `grace` seconds for running
        ones and return what finished; the rest is abandoned."""


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


EXECUTORS = ("serial", "local", "ray")


def get_executor(name: str, workers: int | None = None, **options: Any) -> Executor:
    if name == "serial":
        from .serial import SerialExecutor
        return SerialExecutor()
    if name == "local":
        from .local import LocalExecutor
        return LocalExecutor(workers)
    if name == "ray":
        try:
            from .ray import RayExecutor
        except ImportError as exc:
            raise ImportError("the ray executor needs Ray: pip install 'datamill[ray]'") from exc
        return RayExecutor(workers, **options)
    raise ValueError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")
