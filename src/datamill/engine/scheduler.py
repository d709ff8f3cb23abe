"""Feed items to an executor: lazily, batched, retried, with poison items isolated.

The scheduler pulls items from the source only when the executor has a free slot, so the
work in flight is bounded whatever the size of the input.  Tiny items are batched into
tasks whose size adapts to the measured time per item; a task whose worker died is split
(around the item that was running, when the executor knows it, else in halves) until the
item that kills workers is alone, so only that item fails.
"""
from __future__ import annotations

import heapq
import itertools
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from ..errors import OutputTaken, SystemicFailure
from .executors import Executor, TaskEncodingError
from .task import FAILED, OK, Crash, Done, Outcome, TaskRunner, WorkItem, failed


LONG_TASK_SECONDS = 0.2  # tasks longer than this are not queued behind a running one


class Pending:
    """Items waiting to run (added, or to run again): first in, first out; with `cost` (a
    function of an item's payload: frames to decode, bytes to read), the costliest first, so
    that the last tasks of a job are short ones and no worker is left with a long one alone.
    Only items already added are compared: the input is still read lazily."""

    def __init__(self, cost: Callable[[Any], float] | None = None):
        self._cost = cost
        self._fifo: deque[WorkItem] = deque()
        self._heap: list[tuple[float, int, WorkItem]] = []
        self._seq = itertools.count()

    def append(self, w: WorkItem) -> None:
        if self._cost is None:
            self._fifo.append(w)
        else:  # ties keep their order
            heapq.heappush(self._heap, (-float(self._cost(w.payload) or 0), next(self._seq), w))

    def extend(self, items: Iterable[WorkItem]) -> None:
        for w in items:
            self.append(w)

    def popleft(self) -> WorkItem:
        return self._fifo.popleft() if self._cost is None else heapq.heappop(self._heap)[2]

    def __len__(self) -> int:
        return len(self._fifo) + len(self._heap)

    def __bool__(self) -> bool:
        return bool(self._fifo or self._heap)


@dataclass(slots=True)
class Result:
    """How one item ended: its key and payload, its `Outcome`, how many times it ran.

    `status` is ok, filtered or failed; `value` what the function returned (ok), `reason`
    the filter reason or error class, `error` the outcome of a failed or filtered item (its
    `error_class`, `message`, `traceback`).
    """

    key: Any
    item: Any
    outcome: Outcome
    attempts: int = 1
    seconds: float = 0.0
    task_id: int | None = None

    @property
    def status(self) -> str:
        return self.outcome.status

    @property
    def ok(self) -> bool:
        return self.outcome.status == OK

    @property
    def value(self) -> Any:
        return self.outcome.records if self.outcome.status == OK else None

    @property
    def reason(self) -> str | None:
        return self.outcome.reason

    @property
    def error(self) -> Outcome | None:
        return None if self.outcome.status == OK else self.outcome


class Scheduler:
    """Iterate over `Result`s of `items` (pairs of key and payload) run on `executor`.

    `retries`: further attempts for an item that failed with a retryable error, crashed its
    worker or ran past its deadline.  `batch_size`: items per task, or None to adapt it so a
    task takes about `task_seconds`.  Task ids count from `first_task_id`.  `on_poll` is
    called after each wait for results (to refresh progress during long tasks); `on_start`
    once the executor has started.  `cost(payload)`, when given, ranks the items added with
    `add` (or to run again): the costliest of those waiting runs first (see `Pending`).
    `on_submit(task_id, work_items)` runs before a task is
    sent (to record the outputs it will write; raising `OutputTaken` fails its items as
    `dst_exists` without running them); `on_task_end(task_id, completed)` after a task's
    results were yielded (completed) or after it was lost (crash, deadline, not sendable).

    A job may also run **side tasks**, tasks of its own that are no input item (map's shard
    merges): `add_side(payload, on_done)` runs `payload` alone in a task before any further
    item, retried once if its worker dies, and calls `on_done(task_id, outcome)` (before
    `on_task_end`).  `on_idle()` is called when nothing is left to run; it returns True when
    it added side tasks (the last shard of a job), and the iteration then goes on.
    """

    def __init__(self, executor: Executor, runner: TaskRunner, items: Iterable[tuple[Any, Any]],
                 *, retries: int = 1, timeout: float | None = None, batch_size: int | None = None,
                 max_batch: int = 4096, task_seconds: float = 0.01, first_task_id: int = 0,
                 on_poll: Callable[[], None] | None = None,
                 on_start: Callable[[], None] | None = None,
                 on_submit: Callable[[int, list[WorkItem]], None] | None = None,
                 on_task_end: Callable[[int, bool], None] | None = None,
                 on_idle: Callable[[], bool] | None = None,
                 align: Callable[[Any], int] | None = None,
                 unread: Callable[[], int | None] | None = None,
                 cost: Callable[[Any], float] | None = None):
        self.executor = executor
        self.runner = runner
        self.retries = retries
        self.timeout = timeout
        self._source = iter(items)
        self._fixed_batch = batch_size
        self._batch = batch_size or 1
        self._max_batch = max_batch
        self._task_seconds = task_seconds
        self._per_item: float | None = None
        self._task_seconds_seen: float | None = None
        self._ids = itertools.count(first_task_id)
        self.next_task_id = first_task_id
        self._exact: deque[list[WorkItem]] = deque()  # tasks to run exactly as they are
        self._queued = Pending(cost)  # items added or to run again, batched
        self._inflight: dict[int, list[WorkItem]] = {}
        self._side: deque[WorkItem] = deque()  # side tasks to run (payload, callback)
        self._side_inflight: dict[int, WorkItem] = {}
        self._on_idle = on_idle
        # align(payload): how many items from this one to the next task boundary the job
        # wants (map's ordered shards); a task that starts there ends at the boundary
        self._align = align
        # unread(): how many items the source has still to give, when known: batched tasks
        # near the end are cut so that every worker gets a share of the tail
        self._unread = unread
        self._exhausted = False
        self._started = False
        self._draining = False
        self._on_poll = on_poll
        self._on_start = on_start
        self._on_submit = on_submit
        self._on_task_end = on_task_end or (lambda task_id, completed: None)
        # outputs named by task id (shards): an id whose output path is taken is skipped;
        # else (outputs named by the items) the items fail as dst_exists
        self.renumber_taken = False

    # -- public --------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Result]:
        if not self._started:
            self.executor.start(self.runner, self.timeout)
            if self._fixed_batch == 1:  # the job says its items are heavy: balance, not pin
                self.executor.set_prefetch(1)
            self._started = True
            if self._on_start is not None:
                self._on_start()
        while True:
            yield from self._fill()
            if (not self._inflight and not self._side_inflight and self._exhausted
                    and not self._exact and not self._queued and not self._side):
                if self._on_idle is not None and not self._draining and self._on_idle():
                    continue
                return
            for done in self.executor.poll(0.2):
                yield from self._handle(done)
            if self._on_poll is not None:
                self._on_poll()

    def drain(self, grace: float) -> Iterator[Result]:
        """Stop submitting; collect what finishes within `grace` seconds; abandon the rest."""
        self._draining = True
        for done in self.executor.shutdown(cancel=True, grace=grace):
            yield from self._handle(done)

    def add(self, items: Iterable[tuple[Any, Any]]) -> None:
        """Add items (key, payload) to run, for example those that follow from a result."""
        self._queued.extend(WorkItem(key, payload) for key, payload in items)

    def add_side(self, payload: Any, on_done: Callable[[int, Outcome], None]) -> None:
        """Run `payload` as a task of its own (see the class); `on_done(task_id, outcome)`."""
        self._side.append(WorkItem(on_done, payload))

    def close(self) -> None:
        if self._started:
            self.executor.shutdown(cancel=bool(self._inflight or self._side_inflight))
            self._started = False

    # -- submission ----------------------------------------------------------------------
    def _fill(self) -> Iterator[Result]:
        while not self._draining and self._side and self.executor.free_slots() > 0:
            self._submit_side(self._side.popleft())
        while not self._draining and self.executor.free_slots() > 0:
            task = self._next_task()
            if not task:
                return
            yield from self._submit(task)

    def _next_task(self) -> list[WorkItem]:
        if self._exact:
            return self._exact.popleft()
        size = self._batch
        if self._unread is not None and not self._fixed_batch:
            left = self._unread()
            if left is not None:
                size = max(1, min(size, -(-(left + len(self._queued)) // (2 * self.executor.workers))))
        task: list[WorkItem] = []
        while self._queued and len(task) < size:
            task.append(self._queued.popleft())
        if len(task) < size and not self._exhausted:
            if not task and self._align is not None:
                first = next(self._source, None)
                if first is None:
                    self._exhausted = True
                    return task
                task.append(WorkItem(*first))
                size = max(1, min(size, self._align(first[1])))
            for key, payload in itertools.islice(self._source, size - len(task)):
                task.append(WorkItem(key, payload))
            if len(task) < size:
                self._exhausted = True
        return task

    def _submit(self, task: list[WorkItem]) -> Iterator[Result]:
        task_id = next(self._ids)
        self.next_task_id = task_id + 1
        for _ in range(1000):
            try:
                if self._on_submit is not None:
                    self._on_submit(task_id, task)
                break
            except OutputTaken as exc:
                if not self.renumber_taken:
                    taken = failed("dst_exists", str(exc), type_="OutputTaken")
                    for w in task:
                        yield self._result(w, taken)
                    self._on_task_end(task_id, False)
                    return
                task_id = next(self._ids)  # a shard number taken by the user's file: skip it
                self.next_task_id = task_id + 1
        try:
            self.executor.submit(task_id, [w.payload for w in task])
        except TaskEncodingError as exc:
            self._on_task_end(task_id, False)
            if len(task) > 1:
                self._exact.extend([w] for w in task)
                return
            w = task[0]
            yield self._result(w, failed("unpicklable", f"item {w.key!r}: {exc}",
                                         type_="PicklingError"))
            return
        self._inflight[task_id] = task

    def _submit_side(self, side: WorkItem) -> None:
        task_id = next(self._ids)
        self.next_task_id = task_id + 1
        if self._on_submit is not None:
            try:
                self._on_submit(task_id, [side])
            except OutputTaken as exc:  # a side task's outputs are not renumbered
                raise SystemicFailure(f"{exc}; move it away and run the same command "
                                      "again") from exc
        self.executor.submit(task_id, [side.payload])
        self._side_inflight[task_id] = side

    # -- results -------------------------------------------------------------------------
    def _handle(self, done: Done) -> Iterator[Result]:
        side = self._side_inflight.pop(done.task_id, None)
        if side is not None:
            self._side_done(done, side)
            return
        task = self._inflight.pop(done.task_id, None)
        if task is None:
            return
        if done.crash is not None:
            self._on_task_end(done.task_id, False)
            yield from self._crashed(task, done.crash)
            return
        self._adapt(len(task), done.seconds)
        self._task_seconds_seen = (done.seconds if self._task_seconds_seen is None
                                   else 0.7 * self._task_seconds_seen + 0.3 * done.seconds)
        self.executor.set_prefetch(1 if self._task_seconds_seen > LONG_TASK_SECONDS else 2)
        each = done.seconds / len(task)
        for w, outcome in zip(task, done.results):
            w.attempts += 1
            if (outcome.status == FAILED and outcome.retryable and w.attempts <= self.retries
                    and not self._draining):
                w.last_error = outcome
                self._queued.append(w)
            else:
                yield self._result(w, outcome, each, done.task_id)
        self._on_task_end(done.task_id, True)

    def _side_done(self, done: Done, side: WorkItem) -> None:
        side.attempts += 1
        if done.crash is not None:
            self._on_task_end(done.task_id, False)
            if side.attempts <= 1 and not self._draining:
                self._side.appendleft(side)  # its worker died: once more
                return
            outcome = failed(done.crash.reason, done.crash.message, type_="WorkerCrash")
        else:
            outcome = done.results[0]
            if outcome.status != OK:
                self._on_task_end(done.task_id, False)
        side.key(done.task_id, outcome)  # may raise (a shard that cannot be written)
        if outcome.status == OK:
            self._on_task_end(done.task_id, True)

    def _crashed(self, task: list[WorkItem], crash: Crash) -> Iterator[Result]:
        if not crash.started:  # queued behind the item that crashed: simply run it again
            self._exact.appendleft(task)
            return
        if len(task) == 1 or crash.culprit is not None:
            c = crash.culprit if crash.culprit is not None and crash.culprit < len(task) else 0
            before, culprit, after = task[:c], task[c], task[c + 1:]
            if before:
                self._exact.append(before)
            if after:
                self._exact.append(after)
            culprit.attempts += 1
            lost = failed(crash.reason, crash.message, retryable=True,
                          type_="WorkerCrash" if crash.reason != "timeout" else "Timeout")
            if culprit.attempts <= self.retries and not self._draining:
                culprit.last_error = lost
                self._exact.append([culprit])
            else:
                yield self._result(culprit, lost)
            return
        half = len(task) // 2
        self._exact.append(task[:half])
        self._exact.append(task[half:])

    def _result(self, w: WorkItem, outcome: Outcome, seconds: float = 0.0,
                task_id: int | None = None) -> Result:
        return Result(w.key, w.payload, outcome, max(w.attempts, 1), seconds, task_id)

    def _adapt(self, n: int, seconds: float) -> None:
        if self._fixed_batch:
            return
        per_item = seconds / n
        self._per_item = per_item if self._per_item is None else 0.7 * self._per_item + 0.3 * per_item
        want = int(self._task_seconds / max(self._per_item, 1e-7))
        self._batch = max(1, min(self._max_batch, want, self._batch * 4))


def run_items(executor: Executor, runner: TaskRunner, items: Iterable[tuple[Any, Any]],
              **options: Any) -> Iterator[Result]:
    """Convenience: iterate over outcomes and always shut the executor down at the end."""
    sched = Scheduler(executor, runner, items, **options)
    try:
        yield from sched
    finally:
        sched.close()
