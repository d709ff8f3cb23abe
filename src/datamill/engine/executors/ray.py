"""Tasks on a Ray cluster: the same tasks as `local`, each one a Ray task.

    ex = get_executor("ray", address="auto")   # or "ray://HOST:PORT"; None: a local instance
    ex.start(TaskRunner(fn), timeout=30)       # then free_slots/submit/poll as any executor

The runner (the user's function, pickled by value when it is a lambda) goes to the object
store once; every Ray worker process loads and initialises it before its first task.  Tasks
and results are pickled by the driver and the workers themselves, so an item that cannot be
pickled fails as it does with `local`.  The driver keeps at most two tasks per task slot in
flight, never the whole input.

Ray reruns a task whose worker or node was lost (`max_retries`); when that is not enough the
task comes back as a crash.  The driver cannot see which item was running on a remote
worker, so the crash names no culprit and the scheduler splits the task in halves until the
item that kills workers is alone.  A task past its deadline (the item deadline times its
items, for a batch runner the deadline itself, plus `slack` for a worker to start) is
cancelled, killing its worker, and split the same way.

Workers on several nodes write their outputs themselves: a local DST must then be a shared
filesystem, which `check_shared_path` warns about.
"""
from __future__ import annotations

import logging
import os
import pickle
import time
from dataclasses import dataclass
from typing import Any, Sequence

import ray

from ...errors import UsageError
from ..task import Crash, Done, TaskRunner, failed_with
from .base import Executor, WorkerInitError, dumps, dumps_results, dumps_task

log = logging.getLogger("datamill")
SLACK = 10.0  # seconds added to a task's deadline: a worker process may have to start first

_RUNNER: dict[str, TaskRunner] = {}  # in a Ray worker: the current job's runner, initialised


def _run_task(runner_box: list, task_id: int, blob: bytes) -> bytes:
    """A Ray task: run one task's items; return the pickled per-item results.

    The runner's reference comes in a list so that Ray does not resolve it for every task:
    a worker process fetches and initialises each job's runner once.
    """
    key = runner_box[0].hex()
    runner = _RUNNER.get(key)
    if runner is None:
        try:
            runner = ray.get(runner_box[0])
        except Exception as exc:  # noqa: BLE001 - e.g. its module is not installed on this node
            return dumps(("init_error", f"the function cannot be loaded on a Ray worker: "
                                         f"{failed_with(exc)}"))
        try:
            runner.initialize()
        except Exception as exc:  # noqa: BLE001
            return dumps(("init_error", f"the worker initializer failed: {failed_with(exc)}"))
        _RUNNER.clear()
        _RUNNER[key] = runner
    payloads = pickle.loads(blob)
    start = time.monotonic()
    results = runner.run(payloads, task_id=task_id)
    return dumps_results("done", results, time.monotonic() - start)


_remote_task = ray.remote(_run_task)


@dataclass(slots=True)
class _Task:
    task_id: int
    size: int
    running_since: float | None = None  # when a task slot was free for it (its deadline clock)


class RayExecutor(Executor):
    """Run tasks as Ray tasks on the cluster at `address` (None: start a local instance).

    `workers`: CPUs to use; by default one per core of a local instance, or every CPU of an
    existing cluster.  `cpus_per_task`: the CPUs Ray reserves for one task.  `max_retries`:
    Ray's reruns of a task whose worker or node was lost.  `slack`: seconds added to a
    task's deadline.
    """

    name = "ray"

    def __init__(self, workers: int | None = None, *, address: str | None = None,
                 cpus_per_task: float = 1.0, max_retries: int = 1, slack: float = SLACK):
        super().__init__(workers)
        if not cpus_per_task > 0:
            raise UsageError(f"cpus_per_task must be more than 0, not {cpus_per_task}")
        self._workers_given = workers is not None
        self.address = address
        self.cpus_per_task = cpus_per_task
        self.max_retries = max_retries
        self.slack = slack
        self._owns_ray = False
        self._slots = 1
        self._per_item_deadline = True
        self._timeout: float | None = None
        self._runner_box: list = []
        self._task: Any = None
        self._inflight: dict[Any, _Task] = {}  # object ref -> task, in the order submitted

    def cores_per_worker(self) -> int:
        return max(1, int(self.cpus_per_task))  # what Ray reserves for each task

    # -- life cycle ---------------------------------------------------------------------
    def start(self, runner: TaskRunner, timeout: float | None = None) -> None:
        if not ray.is_initialized():
            joining = self.address or os.environ.get("RAY_ADDRESS")  # an existing cluster
            try:
                ray.init(address=self.address or None, num_cpus=None if joining else self.workers,
                         include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
                         logging_level=logging.WARNING)
            except Exception as exc:  # noqa: BLE001 - ConnectionError would read as an input error
                where = f"the Ray cluster at {joining!r}" if joining else "a local Ray instance"
                raise WorkerInitError(f"cannot start or reach {where}: {exc}") from exc
            self._owns_ray = not joining
        if not self._workers_given:
            self.workers = max(1, int(ray.cluster_resources().get("CPU", self.workers)))
        self._slots = max(1, int(self.workers // self.cpus_per_task))
        self._timeout = timeout
        self._per_item_deadline = runner.batch_fn is None
        try:
            self._runner_box = [ray.put(runner)]
        except Exception as exc:  # noqa: BLE001
            raise WorkerInitError(f"the function cannot be sent to Ray workers: {exc}") from exc
        self._task = _remote_task.options(num_cpus=self.cpus_per_task,
                                          max_retries=self.max_retries, retry_exceptions=False)

    def shutdown(self, cancel: bool = False, grace: float = 0.0) -> list[Done]:
        finished: list[Done] = []
        if cancel:
            deadline = time.monotonic() + grace
            while self._inflight and (left := deadline - time.monotonic()) > 0:
                finished += [d for d in self.poll(min(0.1, left)) if d.crash is None]
        for ref in self._inflight:
            ray.cancel(ref, force=True)
        self._inflight.clear()
        self._runner_box = []
        if self._owns_ray:
            ray.shutdown()
            self._owns_ray = False
        return finished

    def check_shared_path(self, path: str) -> None:
        nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
        if nodes > 1:
            log.warning(
                "warning: the Ray cluster has %d nodes and DST %s is a local path: every node "
                "writes its outputs there, so it must be a shared filesystem mounted at the "
                "same path on every node (else outputs end up scattered over the nodes' disks); "
                "or give an fsspec URL (s3://bucket/prefix) as DST", nodes, path)

    # -- scheduling -----------------------------------------------------------------------
    def free_slots(self) -> int:
        return max(0, self._slots * self.prefetch - len(self._inflight))

    def submit(self, task_id: int, payloads: Sequence[Any]) -> None:
        blob = dumps_task(list(payloads))
        ref = self._task.remote(self._runner_box, task_id, blob)
        self._inflight[ref] = _Task(task_id, len(payloads))
        self._start_clocks()

    def poll(self, timeout: float) -> list[Done]:
        if not self._inflight:
            time.sleep(min(timeout, 0.01))
            return []
        if self._timeout is not None:
            timeout = min(timeout, max(0.05, self._timeout / 4))
        refs = list(self._inflight)
        ready, rest = ray.wait(refs, num_returns=1, timeout=timeout)
        if ready and rest:  # and whatever else has finished meanwhile
            ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        done = [self._collect(ref) for ref in ready]
        if self._timeout is not None:
            self._enforce_deadlines(done)
        self._start_clocks()
        return done

    def _collect(self, ref: Any) -> Done:
        task = self._inflight.pop(ref)
        try:
            msg = pickle.loads(ray.get(ref))
        except ray.exceptions.RayTaskError as exc:  # our task function itself raised
            cause = exc.cause if isinstance(exc.cause, BaseException) else exc
            return Done(task.task_id, [failed_with(cause)] * task.size)
        except ray.exceptions.RayError as exc:  # the worker or its node was lost, after retries
            first = (str(exc).strip().splitlines() or [""])[0]
            return Done(task.task_id, crash=Crash(
                "worker_died", f"the Ray worker was lost ({type(exc).__name__}: {first})",
                culprit=None, started=True))
        if msg[0] == "init_error":
            raise WorkerInitError(msg[1])
        _, results, seconds = msg
        return Done(task.task_id, results, seconds)

    def _start_clocks(self) -> None:
        """Start the deadline clock of the tasks that have a task slot (Ray runs tasks of one
        kind in the order they were submitted; the others wait in Ray's queue)."""
        now = time.monotonic()
        for i, task in enumerate(self._inflight.values()):
            if i >= self._slots:
                break
            if task.running_since is None:
                task.running_since = now

    def _enforce_deadlines(self, done: list[Done]) -> None:
        now = time.monotonic()
        for ref, task in list(self._inflight.items()):
            if task.running_since is None:
                break
            allowed = self._timeout * (task.size if self._per_item_deadline else 1) + self.slack
            if now - task.running_since > allowed:
                ray.cancel(ref, force=True)
                del self._inflight[ref]
                per = f" ({self._timeout:g} s per item)" if self._per_item_deadline else ""
                done.append(Done(task.task_id, crash=Crash(
                    "timeout", f"the task ran past its deadline of {allowed:g} s{per}",
                    culprit=None, started=True)))
