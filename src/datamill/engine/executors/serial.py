"""Run every task in the calling process: for debugging with pdb, same results as `local`.

Deadlines cannot be enforced here (nothing can interrupt the item), and a crash of the
item's code crashes the process: use `local` for untrusted inputs.
"""
from __future__ import annotations

import time
from collections import deque
from typing import Any, Sequence

from ..task import Done, TaskRunner, failed_with
from .base import Executor, WorkerInitError


class SerialExecutor(Executor):
    name = "serial"

    def __init__(self, workers: int | None = None) -> None:
        super().__init__(1)  # one, whatever `workers` says
        self._queue: deque = deque()
        self._runner: TaskRunner | None = None

    def start(self, runner: TaskRunner, timeout: float | None = None) -> None:
        self._runner = runner
        try:
            runner.initialize()
        except Exception as exc:  # noqa: BLE001
            raise WorkerInitError(f"the worker initializer failed: {failed_with(exc)}") from exc

    def free_slots(self) -> int:
        return 0 if self._queue else 1

    def submit(self, task_id: int, payloads: Sequence[Any]) -> None:
        self._queue.append((task_id, payloads))

    def poll(self, timeout: float) -> list[Done]:
        if not self._queue:
            return []
        task_id, payloads = self._queue.popleft()
        start = time.monotonic()
        results = self._runner.run(payloads, task_id=task_id)
        return [Done(task_id, results, time.monotonic() - start)]

    def shutdown(self, cancel: bool = False, grace: float = 0.0) -> list[Done]:
        self._queue.clear()
        return []
