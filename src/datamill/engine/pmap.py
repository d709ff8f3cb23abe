"""`pmap`: a parallel map that is bounded, survives dead workers and reports every error."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Sequence

from .executors import get_executor
from .scheduler import Result, run_items
from .task import TaskRunner


def pmap(fn: Callable[[Any], Any], items: Iterable[Any], *, workers: int | None = None,
         executor: str = "local", retries: int = 1, timeout: float | None = None,
         initializer: Callable[..., Any] | None = None, initargs: Sequence[Any] = (),
         batch_size: int | None = None) -> Iterator[Result]:
    """Apply `fn` to every item in parallel; yield a `Result` per item as each finishes.

    Unlike `multiprocessing.Pool.imap_unordered`, the input is read lazily (a generator of
    ten million items runs in constant memory), an exception in one item is returned as that
    item's `.error` (class, message, traceback) instead of ending the loop, a worker that dies
    (segfault, SIGKILL, out of memory) costs only the item it was running, and an item past
    `timeout` seconds is killed.  Failed items are tried `retries` more times (exceptions of
    a permanent kind, such as TypeError or FileNotFoundError, are not).  Tiny items are
    batched automatically (`batch_size` fixes the batch).  Results come in completion order.

    `executor`: "local" (worker processes, one per core unless `workers`), "serial" (in this
    process, for pdb) or "ray".  `initializer(*initargs)` runs once in each worker.

    >>> from datamill import pmap
    >>> for r in pmap(lambda x: 10 // x, [1, 2, 0], workers=2):   # doctest: +SKIP
    ...     print(r.item, r.ok, r.value if r.ok else r.error.error_class)
    1 True 10
    2 True 5
    0 False ZeroDivisionError
    """
    ex = get_executor(executor, workers)
    runner = TaskRunner(fn, initializer, initargs)
    pairs = ((item, item) for item in items)
    return run_items(ex, runner, pairs, retries=retries, timeout=timeout, batch_size=batch_size)
