"""What a job tells the engine: its items, what a worker does with one, what is kept."""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import pyarrow as pa

from ..errors import UsageError
from .dst import STATE_FOLDER, Dst
from .task import TaskRunner


@dataclass(slots=True)
class Item:
    """One unit of work.  `key` is stable across runs; `source`, `size` and `mtime` describe
    the input file (a changed file is redone); `stage` names the step for jobs whose items
    expand into further items (a video is planned, then its clip ranges are cut)."""

    key: str
    payload: Any
    stage: str = ""
    source: str | None = None
    size: int | None = None
    mtime: float | None = None
    parent: str | None = None  # the key of the item this one followed from (by `expand`)
    error: tuple[str, str] | None = None  # (error class, message): fails without running
    columns: dict | None = None  # manifest columns known before it runs (a list's row number)


class Job(ABC):
    """Base of every job.  Subclasses set `name` and the manifest columns, and implement
    `fingerprint`, `items` and `runner`; the engine does the rest."""

    name = "job"
    final_stage = ""  # records of items of other stages are plans, not manifest rows
    manifest_fields: list[pa.Field] = []
    batch_size: int | None = 1  # None lets the engine batch tiny items
    task_seconds = 0.01  # with batch_size None: about how long a batched task should take
    max_batch = 4096  # with batch_size None: the most items in one task

    def align(self, payload: Any) -> int | None:
        """How many items, from this one, a task starting with it may hold (a task then ends
        on a boundary the job wants); None: no limit.  Used when `aligned` is True."""
        return None

    aligned = False

    def cost(self, payload: Any) -> float:
        """How much work the item of `payload` is (a video range's frames); among items that
        followed from others (`expand`) and wait to run, the costliest go first, so the job
        does not end on one long task.  Used when `costed` is True."""
        return 0.0

    costed = False
    # Set by the engine before `runner()`: the cores each worker has to itself (work that can
    # use threads, such as video codecs, sizes its thread pools by it), and how many workers.
    cores_per_worker = 1
    workers = 1
    unit = "item"  # what the input's items are, for progress and the summary ("video", "url")
    # True when each task's outputs belong to its items alone (one video's clips), so an
    # item that is redone (its source changed) replaces them; False for shards of many items.
    outputs_per_item = False
    run_id = 0  # set by the engine before `prepare`: the ledger's id of this run
    executors: tuple[str, ...] | None = None  # the executors the job can run on (first: default)
    dry_run = False  # set by the engine: a dry run writes nothing, not even the state folder

    def __init__(self, src: str | os.PathLike, dst: str | os.PathLike | Dst):
        self.src = Path(src)
        self.dst = Dst(dst)  # a local folder or an fsspec URL (engine/dst.py)
        self.state_dir: Path | None = None  # the ledger's folder, set by the run loop

    # -- the contract ------------------------------------------------------------------------
    @abstractmethod
    def fingerprint(self) -> dict:
        """The options that change per-item results (a rerun with others needs --overwrite)."""

    def options(self) -> dict:
        """Every option worth recording in stats.json."""
        return self.fingerprint()

    @abstractmethod
    def items(self) -> Iterator[Item]:
        """The job's items, lazily, in a deterministic order."""

    @abstractmethod
    def runner(self) -> TaskRunner:
        """What a worker runs on an item's payload: returns the item's output records."""

    def expand(self, item: Item, records: list[dict]) -> Iterable[Item]:
        """Items that follow from a finished item of a non-final stage."""
        return ()

    def outputs(self, task_id: int, payloads: list) -> list[str]:
        """The files or folders (paths relative to DST) that task `task_id` will write.  The
        engine records them before the task runs and removes them if it never commits: a
        job writes nothing in DST that it does not declare here or in `report_names`."""
        return []

    def report_names(self) -> list[str]:
        """The job's own report files (relative to DST), written by `reports` or `finish`."""
        return []

    def prepare(self, ledger: Any, overwrite: bool) -> None:
        """Called before the run starts, after the engine removed uncommitted outputs (and with
        `overwrite`, every output): a job undoes here what else it did (dedup's moves)."""

    def task_timeout(self, item_timeout: float | None) -> float | None:
        """The deadline the engine enforces per item (per task for a batch runner)."""
        return item_timeout

    def retry_matches(self, asked: str, error_class: str | None) -> bool:
        """Whether `--retry-failed ASKED` retries an item that failed with `error_class`; a
        job may let one word name a family of its classes."""
        return asked == error_class

    # -- a job that assembles its own outputs from its tasks' (map's shards) -----------------
    def item_ended(self, key: str, payload: Any, status: str, earlier: bool) -> None:
        """Input item `key` has its final outcome `status`, in this run or (`earlier`) in an
        earlier one whose outputs are kept.  Called once per input item and run."""

    def after_commit(self, task_id: int | None, ledger: Any) -> list:
        """Task `task_id`'s outcomes and outputs are committed (buffered: `ledger.flush()`
        makes it durable): returns payloads of side tasks to run (see `side_done`).  Called
        with None once at the start, for side tasks an earlier run left to do."""
        return []

    def side_done(self, task_id: int, payload: Any, outcome: Any, ledger: Any) -> None:
        """A side task ended (its outputs commit after this returns when `outcome` is ok);
        raise SystemicFailure to stop the job."""

    def at_end(self, ledger: Any) -> list:
        """Nothing is left to run and the run is completing: side tasks to run last (the last
        shard), or none.  Called again after those have ended."""
        return []

    def finish(self, ledger: Any, quiet: bool) -> None:
        """A global phase after the per-item work (dedup's grouping); none by default."""

    def reports(self, ledger: Any) -> None:
        """Write the job's own report files from the ledger, after every run."""

    def summary_lines(self, ledger: Any) -> list[str]:
        return []

    def progress_note(self) -> str:
        """The job's own words on the progress line (map: records written, shards committed)."""
        return ""

    def count(self) -> int | None:
        """How many items `items()` will yield, or None; run in a thread beside the job (a
        list's lines, a tree walked ahead), for the progress total and ETA."""
        return None

    # -- checks shared by jobs ---------------------------------------------------------------
    def validate(self) -> None:
        """Refuse, with exit status 2, a missing SRC, an unwritable DST or DST inside SRC;
        makes the state folder, except for a dry run (which writes nothing)."""
        if not self.src.exists():
            raise UsageError(f"SRC does not exist: {self.src}")
        self.validate_dst(self.src)

    def validate_dst(self, src: Path | None = None) -> None:
        """Refuse an unwritable DST, or one inside folder `src`; make the state folder."""
        create = not self.dry_run
        if self.dst.is_remote:
            if create:
                self.dst.check_writable()
            return
        dst = self.dst.path.resolve()
        if src is not None and src.is_dir():
            src = src.resolve()
            if dst == src or src in dst.parents:
                raise UsageError(f"DST {self.dst} is inside SRC {self.src}: its outputs would "
                                 "become inputs; choose a DST outside SRC")
        if dst.exists() and not dst.is_dir():
            raise UsageError(f"DST exists and is not a folder: {self.dst}")
        if not create:
            return
        try:
            (dst / STATE_FOLDER).mkdir(parents=True, exist_ok=True)
            probe = dst / STATE_FOLDER / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise UsageError(f"DST is not writable: {self.dst} ({exc.strerror or exc})") from exc

    def source_gone(self) -> bool:
        return not self.src.exists()


def chunked(iterable: Iterable[Any], n: int) -> Iterator[list]:
    """Lists of `n` items; when the iterable fails, the items read before come first."""
    it = iter(iterable)
    while True:
        chunk: list = []
        try:
            for _ in range(n):
                chunk.append(next(it))
        except StopIteration:
            if chunk:
                yield chunk
            return
        except Exception:
            if chunk:
                yield chunk
            raise
        yield chunk
