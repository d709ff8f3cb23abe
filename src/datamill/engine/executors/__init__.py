"""Executors by name: `serial` (this process), `local` (worker processes), `ray` (a cluster).

Each one is a file implementing the interface in `base.py`; Ray is imported only when the
`ray` executor is asked for.
"""
from __future__ import annotations

from typing import Any

from ...errors import UsageError
from .base import Executor, TaskEncodingError, WorkerInitError, default_workers
from .local import LocalExecutor
from .serial import SerialExecutor

EXECUTORS = ("serial", "local", "ray")

__all__ = ["EXECUTORS", "Executor", "TaskEncodingError", "WorkerInitError", "default_workers",
           "get_executor"]


def get_executor(name: str, workers: int | None = None, **options: Any) -> Executor:
    """The executor called `name` with `workers` workers and its own `options` (the Ray
    executor's `address`, ...); an unknown name or option is a UsageError naming it."""
    if name == "serial":
        return SerialExecutor.create(workers, **options)
    if name == "local":
        return LocalExecutor.create(workers, **options)
    if name == "ray":
        try:
            from .ray import RayExecutor
        except ImportError as exc:
            raise ImportError("the ray executor needs Ray: pip install 'datamill[ray]'") from exc
        return RayExecutor.create(workers, **options)
    raise UsageError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")
