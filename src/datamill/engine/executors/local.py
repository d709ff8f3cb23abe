"""Worker processes on this machine, one per core by default.

Each worker has its own task queue and its own result pipe, so the driver always knows which
tasks a worker holds: when a worker dies (segfault, SIGKILL, OOM kill) only those tasks are
affected, and a new worker takes its place.  Workers publish the item they are on in a
shared array (`WorkerStatus`); the driver uses it to kill an item that runs past its
deadline and to name the item that was running when a worker died.

A stream runner (`TaskRunner(stream_fn=...)`) is called once per worker and takes its tasks
itself (`_WorkerStream`): when it asks for the next task while one is still open, the worker
tells the driver ("ready"), which may then give it one task more than it holds (never more
than two), so that a worker can start its next task while the last items of the current one
run.  Results may then come back in any order.

Workers are forked, so the user's function and initializer need not be picklable (a lambda
works); task payloads and results are pickled.

Workers die with their driver, whatever kills it (kill -9 included): on Linux the kernel
sends them SIGKILL when the driver's thread that forked them ends (the parent-death signal),
and a thread in each worker also checks every half second that its parent is still the
driver, which covers other systems and drivers that fork from a thread other than the main
one.  Ctrl-C and SIGTERM are the driver's to handle: workers ignore them.
"""
from __future__ import annotations

import ctypes
import logging
import functools
import multiprocessing as mp
import os
import pickle
import signal
import sys
import threading
import time
from collections import deque
from multiprocessing.connection import wait
from typing import Any, Sequence

from ..fault import fault
from ..task import Crash, Done, TaskContext, TaskRunner, TaskStream, failed_with
from .base import (Executor, WorkerInitError, WorkerStatus, default_workers, dumps, dumps_results,
                   dumps_task)

_DRIVER_SIGNALS = {signal.SIGINT, signal.SIGTERM}  # the driver decides how to stop
_PR_SET_PDEATHSIG = 1
WATCH_INTERVAL = 0.5  # seconds between a worker's checks that its driver is alive


@functools.lru_cache(maxsize=None)
def _prctl() -> Any:
    """libc's prctl, or None where there is none (loaded in the driver, inherited by forks)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover - a libc without prctl
        return None


def _die_with_driver(driver: int, parent_death_signal: bool) -> None:
    """Make this worker die when `driver` (its parent) does, even by kill -9.

    The parent-death signal fires when the parent *thread* that forked us ends, so the
    driver asks for it only when it forks from its main thread.  The driver may have died
    before the signal was armed: check the parent once after arming it.  The watch thread
    is the guard where there is no parent-death signal.
    """
    prctl = _prctl() if parent_death_signal else None
    if prctl is not None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != driver:
        os.kill(os.getpid(), signal.SIGKILL)
    threading.Thread(target=_watch_driver, args=(driver,), name="datamill-watch-driver",
                     daemon=True).start()


def _watch_driver(driver: int) -> None:
    while True:
        time.sleep(WATCH_INTERVAL)
        if os.getppid() != driver:  # re-parented: the driver is gone
            os.kill(os.getpid(), signal.SIGKILL)


def _worker_main(runner: TaskRunner, tasks: Any, conn: Any, status: WorkerStatus,
                 stopping: Any, driver: int, parent_death_signal: bool) -> None:
    # The driver forked us with these signals blocked: a Ctrl-C that arrived meanwhile is
    # discarded here instead of raising KeyboardInterrupt in a half-started worker.
    for sig in _DRIVER_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _DRIVER_SIGNALS)
    _die_with_driver(driver, parent_death_signal)
    try:
        runner.initialize()
    except BaseException as exc:  # noqa: BLE001
        conn.send_bytes(dumps(("init_error", str(failed_with(exc)))))
        return
    if runner.stream_fn is not None:
        _serve_stream(runner.stream_fn, _WorkerStream(tasks, conn, status, stopping))
        return
    clock = time.monotonic
    while True:
        blob = tasks.get()
        if blob is None or stopping.is_set():
            return
        task_id, payloads = pickle.loads(blob)
        status.begin_task(task_id)
        start = clock()
        results = runner.run(payloads, task_id, status)
        seconds = clock() - start
        status.end_task()
        conn.send_bytes(dumps_results(task_id, results, seconds))


class _WorkerStream(TaskStream):
    """A worker's task queue and result pipe as a `TaskStream`.  The oldest open task is the
    one its `WorkerStatus` shows (deadline, progress); a task started beside it takes its
    place, with its own start time, when it ends."""

    def __init__(self, tasks: Any, conn: Any, status: WorkerStatus, stopping: Any):
        self._tasks, self._conn, self._status, self._stopping = tasks, conn, status, stopping
        self._lock = threading.Lock()  # next() may run in another thread than done()
        self.open: list[TaskContext] = []  # oldest first
        self._sizes: dict[int, int] = {}

    def next(self) -> tuple[TaskContext, list] | None:
        with self._lock:
            if self.open:  # this worker can take one task more now
                self._conn.send_bytes(dumps(("ready", self.open[-1].id)))
        blob = self._tasks.get()
        if blob is None or self._stopping.is_set():
            return None
        task_id, payloads = pickle.loads(blob)
        with self._lock:
            task = TaskContext(task_id, self._status, current=not self.open)
            if task.current:
                self._status.begin_task(task_id)
                self._status.begin_item(-1)
            self.open.append(task)
            self._sizes[task_id] = len(payloads)
        return task, payloads

    def size(self, task: TaskContext) -> int:
        return self._sizes[task.id]

    def done(self, task: TaskContext, results: list) -> None:
        if len(results) != self._sizes[task.id]:
            results = [failed_with(RuntimeError(
                f"stream function returned {len(results)} results for "
                f"{self._sizes[task.id]} items"))] * self._sizes[task.id]
        fault("task-end")
        with self._lock:
            self.open.remove(task)
            del self._sizes[task.id]
            self._conn.send_bytes(dumps_results(task.id, results, time.monotonic() - task.started))
            if task.current:
                if self.open:
                    after = self.open[0]
                    after.current = True
                    self._status.resume_task(after.id, after.started, after.done)
                else:
                    self._status.end_task()


def _serve_stream(stream_fn: Any, stream: _WorkerStream) -> None:
    """Run a stream runner until its tasks end.  If it raises (or returns with tasks open),
    its open tasks fail with that error and the worker exits: the driver replaces it and
    runs again the tasks it was given and had not begun."""
    try:
        stream_fn(stream)
        if stream.open:
            raise RuntimeError("the stream function returned with tasks unfinished")
    except Exception as exc:  # noqa: BLE001 - the open tasks' items fail as data
        for task in list(stream.open):
            stream.done(task, [failed_with(exc)] * stream.size(task))
        raise


class _Worker:
    def __init__(self, slot: int, status: WorkerStatus, proc: Any, tasks: Any, conn: Any):
        self.slot = slot
        self.status = status
        self.proc = proc
        self.tasks = tasks
        self.conn = conn
        self.held: deque[int] = deque()  # task ids in the order the worker runs them
        self.ready = False  # a stream worker asked for one task more than it holds


class LocalExecutor(Executor):
    name = "local"

    def __init__(self, workers: int | None = None):
        super().__init__(workers)
        cores = default_workers()
        if self.workers > 2 * cores:
            logging.getLogger("datamill").warning(
                "warning: --workers %d on %d cores: the workers take turns on the cores, so "
                "each item takes longer and memory grows with the workers; the default is one "
                "worker per core", self.workers, cores)
        self._ctx = mp.get_context("fork")
        self._workers: list[_Worker] = []
        self._runner: TaskRunner | None = None
        self._timeout: float | None = None
        self._status: list[WorkerStatus] = []  # by slot, kept when a worker is replaced
        self._stopping = None

    # -- life cycle ---------------------------------------------------------------------
    def start(self, runner: TaskRunner, timeout: float | None = None) -> None:
        self._runner = runner
        self._timeout = timeout
        self._status = WorkerStatus.shared(self._ctx, self.workers)
        self._stopping = self._ctx.Event()
        _prctl()  # load libc once here, not in every worker
        self._workers = [self._spawn(slot) for slot in range(self.workers)]

    def _spawn(self, slot: int) -> _Worker:
        tasks = self._ctx.Queue()
        reader, writer = self._ctx.Pipe(duplex=False)
        status = self._status[slot]
        status.end_task()
        from_main_thread = threading.current_thread() is threading.main_thread()
        proc = self._ctx.Process(
            target=_worker_main, name=f"datamill-worker-{slot}", daemon=True,
            args=(self._runner, tasks, writer, status, self._stopping,
                  os.getpid(), from_main_thread))
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _DRIVER_SIGNALS)
        try:
            proc.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        writer.close()
        return _Worker(slot, status, proc, tasks, reader)

    def shutdown(self, cancel: bool = False, grace: float = 0.0) -> list[Done]:
        finished: list[Done] = []
        if self._stopping is None:  # never started (the run stopped before it began)
            return finished
        if cancel:
            self._stopping.set()  # workers begin no new task
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and any(
                    w.held and w.status.task >= 0 for w in self._workers):
                finished += [d for d in self.poll(0.1) if d.crash is None]
        for w in self._workers:
            try:
                w.tasks.put(None)
            except (OSError, ValueError):
                pass
        end = time.monotonic() + (0.5 if cancel else 5.0)
        for w in self._workers:
            w.proc.join(max(0.0, end - time.monotonic()))
        for w in self._workers:
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join(1.0)
            self._close(w)
        self._workers = []
        return finished

    def _close(self, w: _Worker) -> None:
        w.conn.close()
        w.tasks.cancel_join_thread()
        w.tasks.close()

    # -- scheduling -----------------------------------------------------------------------
    def free_slots(self) -> int:
        return sum(self._room(w) for w in self._workers)

    def _room(self, w: _Worker) -> int:
        return max(0, self.prefetch - len(w.held), int(w.ready and len(w.held) < 2))

    def in_progress(self) -> int:
        return sum(w.status.done for w in self._workers if w.held and w.status.task == w.held[0])

    def outcomes_so_far(self) -> tuple[int, int, int] | None:
        totals = [status.outcomes() for status in self._status]
        ok, other, nbytes = (sum(t[k] for t in totals) for k in range(3))
        return (ok, other, nbytes) if ok or other else None

    def submit(self, task_id: int, payloads: Sequence[Any]) -> None:
        blob = dumps_task((task_id, payloads))
        worker = max(self._workers, key=lambda w: (self._room(w) > 0, -len(w.held)))
        worker.ready = False
        worker.held.append(task_id)
        worker.tasks.put(blob)

    def poll(self, timeout: float) -> list[Done]:
        if not any(w.held for w in self._workers):
            time.sleep(min(timeout, 0.01))
            return []
        if self._timeout is not None:
            timeout = min(timeout, max(0.05, self._timeout / 4))
        by_handle: dict[Any, _Worker] = {}
        for w in self._workers:
            by_handle[w.conn] = w
            by_handle[w.proc.sentinel] = w
        ready = wait(list(by_handle), timeout)
        done: list[Done] = []
        dead: dict[int, _Worker] = {}
        for handle in ready:
            w = by_handle[handle]
            if handle is w.conn:
                if not self._receive(w, done):
                    dead[w.slot] = w
            else:
                dead[w.slot] = w
        for w in dead.values():
            while self._receive(w, done, block=False):
                pass
            self._replace(w, done, self._death_message(w), "worker_died")
        if self._timeout is not None:
            self._enforce_deadline(done)
        return done

    def _receive(self, w: _Worker, done: list[Done], block: bool = True) -> bool:
        """Read one message from a worker; False when the pipe is closed or empty."""
        try:
            if not block and not w.conn.poll():
                return False
            msg = pickle.loads(w.conn.recv_bytes())
        except (EOFError, OSError):
            return False
        if msg[0] == "init_error":
            raise WorkerInitError(f"the worker initializer failed: {msg[1]}")
        if msg[0] == "ready":
            w.ready = bool(w.held) and w.held[-1] == msg[1]
            return True
        task_id, results, seconds = msg
        if task_id in w.held:  # a stream worker may finish a later task first
            w.held.remove(task_id)
        w.ready = False
        done.append(Done(task_id, results, seconds))
        return True

    def _death_message(self, w: _Worker) -> str:
        w.proc.join(1.0)
        code = w.proc.exitcode
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            hint = " (out of memory?)" if -code == signal.SIGKILL else ""
            return f"the worker process was killed by {name}{hint}"
        return f"the worker process exited with status {code}"

    def _replace(self, w: _Worker, done: list[Done], message: str, reason: str) -> None:
        """Report the tasks `w` held as crashed, and start a new worker in its slot."""
        running = w.status.task
        index = w.status.item
        culprit = index if index >= 0 else None
        for i, task_id in enumerate(w.held):
            started = i == 0 and running == task_id
            done.append(Done(task_id, crash=Crash(reason, message,
                                                 culprit if started else None, started)))
        w.held.clear()
        if w.proc.is_alive():
            w.proc.kill()
            w.proc.join(1.0)
        self._close(w)
        if not self._stopping.is_set():
            self._workers[self._workers.index(w)] = self._spawn(w.slot)
        else:
            self._workers.remove(w)

    def _enforce_deadline(self, done: list[Done]) -> None:
        now = time.monotonic()
        for w in list(self._workers):
            if w.held and w.status.task == w.held[0] and now - w.status.since > self._timeout:
                w.proc.kill()
                self._replace(w, done, f"the item ran past its deadline of {self._timeout:g} s",
                              "timeout")
