"""Job `download`: a list of image URLs to a training-ready image dataset.

Items are the input's rows, keyed by what they hold (the URL, caption and kept columns; see
engine/keys.py), so a row moved in the list is not fetched again and a new one is.  The engine
groups them into tasks of `shard_size` rows; a worker fetches a task's URLs concurrently
(asyncio, hundreds of connections, a total deadline per URL), checks and transforms each image
and writes the task's shard, named by the task id, so that URLs retried later land in new
shards after the existing ones.  The shard is the task's declared output: the engine removes
it if the task never commits, so each URL is in exactly one shard.

A worker keeps `--concurrency` URLs in flight across its shards (`serve_shards`, a stream
runner): once every URL of its shard has started, it takes its next task and starts that
one's URLs beside the last ones of the first, so a slow or never-ending URL at the end of a
shard idles nothing until its deadline.  A shard is written and reported as soon as its own
URLs are done; a worker holds at most two open shards.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import math
import os
import threading
from dataclasses import dataclass
from typing import Any, Iterator

import pyarrow as pa

from ..errors import Filtered, ItemError, UsageError
from ..engine.job import Item, Job, chunked
from ..engine.keys import ContentKeys
from ..engine.run import RunOptions, RunReport, run_job
from ..engine.dst import Dst
from ..engine.task import TaskContext, TaskRunner, TaskStream, failed, failed_with, filtered, ok
from ..io.http import FetchOptions, FetchResult, Fetcher
from ..io.shards import SHARD_FORMATS, completes_record, open_shard_writer, shard_name
from ..io.sources import SourceError, count_rows, list_format_option, read_rows, sniff_format
from ..media.image import ImageOptions, process_image
from ..options import OptionError, Options, comma_list, group, option, split_flat


# The fields datamill writes in every record's metadata (a kept column may not take a name).
RECORD_FIELDS = frozenset({"key", "row", "url", "caption", "width", "height", "original_width",
                           "original_height", "sha256", "status"})


@dataclass(frozen=True)
class DownloadOptions(Options):
    """What to read, how to fetch, what to do with each image, how to store it.  The fetch
    options' --timeout and --retries are per URL: they replace the engine's for this job,
    whose task deadline is `DownloadJob.task_timeout`."""

    url_col: str = option("url", "Column of the URL (csv, tsv, jsonl, parquet).")
    caption_col: str | None = option(None, "Column of the caption, stored as <key>.txt.")
    keep_cols: tuple[str, ...] = option(
        (), "Other columns to keep in the metadata, comma-separated.", parse=comma_list)
    input_format: str | None = list_format_option()
    output_format: str = option(
        "files", "files: 00000/000000123.jpg + .json; webdataset: 00000.tar; parquet: "
        "00000.parquet.", name="format", choices=SHARD_FORMATS)
    shard_size: int = option(10_000, "URLs per shard.", min=1, fingerprint=False)
    image: ImageOptions = group(ImageOptions, fingerprint_key="image")
    fetch: FetchOptions = group(FetchOptions)

    def check(self) -> None:
        taken = sorted(set(self.keep_cols) & RECORD_FIELDS)
        if taken:
            raise OptionError(f"--keep-cols {', '.join(taken)}: datamill writes its own field "
                              "of that name in every record's metadata; rename the column in "
                              "the list")


class _Shard:
    """One task's shard being filled: its outcomes so far and what is still running."""

    def __init__(self, opts: DownloadOptions, dst: Dst, task: TaskContext, payloads: list):
        self.task, self.payloads = task, payloads
        self.results: list[Any] = [None] * len(payloads)
        self.requests: list[tuple[int, str]] = []
        for i, (key, row, url, caption, kept, error) in enumerate(payloads):
            if error is not None:
                self.results[i] = failed("bad_row", error)
                task.advance(outcome=self.results[i].status)
            else:
                self.requests.append((i, url or ""))
        self.running = len(self.requests)  # URLs not finished
        self.ended = False
        self._staged = contextlib.ExitStack()
        root = self._staged.enter_context(dst.staged(last=completes_record))
        try:
            self.writer = open_shard_writer(opts.output_format, str(root), task.id)
        except BaseException:
            self._staged.close()
            raise

    def to_start(self) -> Iterator[tuple["_Shard", int, str]]:
        for i, url in self.requests:
            yield self, i, url

    def store(self, opts: DownloadOptions, fetched: FetchResult) -> None:
        i = fetched.key
        self.results[i] = store_image(opts, self.writer, self.task.id, self.payloads[i], fetched)
        self.running -= 1
        self.task.advance(outcome=self.results[i].status, nbytes=len(fetched.body or b""))

    def close(self) -> list:
        """Write the shard (none without an image) and return its outcomes."""
        with self._staged:
            if self.writer.count:
                self.writer.close()
            else:
                self.writer.abort()
        return self.results

    def abort(self) -> None:
        self.writer.abort()
        self._staged.__exit__(RuntimeError, RuntimeError("aborted"), None)  # no upload


def serve_shards(opts: DownloadOptions, dst: Dst, tasks: TaskStream) -> None:
    """Run in a worker (a stream runner): fetch, check and store each task's URLs as shard
    `task.id`, in DST or in a local folder uploaded to a URL DST when the shard is
    complete, starting the next task's URLs as soon as the current one's have all started."""
    asyncio.run(_serve(opts, dst, tasks))


async def _serve(opts: DownloadOptions, dst: Dst, tasks: TaskStream) -> None:
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()  # ("task", task or None) | ("url", shard, result)
    wanted = threading.Semaphore(0)

    def read_tasks() -> None:  # the blocking reads of the task queue, one per `wanted`
        while True:
            wanted.acquire()
            task = tasks.next()
            loop.call_soon_threadsafe(events.put_nowait, ("task", task))
            if task is None:
                return

    threading.Thread(target=read_tasks, name="datamill-next-shard", daemon=True).start()
    shards: list[_Shard] = []  # open, oldest first: at most two
    feeding: Iterator[tuple[_Shard, int, str]] = iter(())  # the newest shard's URLs to start
    all_started, asked, ended, in_flight = True, True, False, 0
    wanted.release()

    def end_shard(shard: _Shard, error: BaseException | None = None) -> None:
        shards.remove(shard)
        shard.ended = True
        if error is None:
            try:
                results = shard.close()
            except Exception as exc:  # noqa: BLE001 - a shard that cannot be written
                error = exc
        if error is not None:
            shard.abort()
            results = [failed_with(error)] * len(shard.payloads)
        tasks.done(shard.task, results)

    async with Fetcher(opts.fetch) as fetcher:
        try:
            while shards or not ended:
                while not all_started and in_flight < opts.fetch.concurrency:
                    started = next(feeding, None)
                    if started is None:
                        all_started = True
                    elif not started[0].ended:
                        shard, i, url = started
                        fetcher.start(i, url, functools.partial(_fetched, events, shard))
                        in_flight += 1
                if all_started and not asked and not ended and len(shards) < 2:
                    asked = True  # every URL has started: the next task's may start too
                    wanted.release()
                event = await events.get()
                if event[0] == "task":
                    asked = False
                    if event[1] is None:
                        ended = True
                        continue
                    task, payloads = event[1]
                    try:
                        shard = _Shard(opts, dst, task, payloads)
                    except Exception as exc:  # noqa: BLE001 - its items fail, the worker goes on
                        tasks.done(task, [failed_with(exc)] * len(payloads))
                        continue
                    shards.append(shard)
                    feeding = shard.to_start()
                    all_started = False
                else:
                    shard, fetched = event[1], event[2]
                    in_flight -= 1
                    if shard.ended:  # its shard failed as a whole
                        continue
                    try:
                        shard.store(opts, fetched)
                    except Exception as exc:  # noqa: BLE001 - the whole shard fails
                        end_shard(shard, exc)
                        continue
                if shard.running == 0:
                    end_shard(shard)
        except BaseException:
            for shard in shards:
                shard.abort()
            raise


def _fetched(events: asyncio.Queue, shard: _Shard, fetched: FetchResult) -> None:
    events.put_nowait(("url", shard, fetched))


def store_image(opts: DownloadOptions, writer: Any, shard: int, payload: tuple,
                fetched: FetchResult) -> tuple:
    """The outcome of one fetched URL; an image that passes is added to the shard."""
    key, row, url, caption, kept, _ = payload
    if fetched.status == "filtered":
        return filtered(fetched.error_class or "filtered", fetched.message or "")
    if fetched.status != "ok":
        return failed(fetched.error_class or "error", fetched.message or "",
                      retryable=False, type_="FetchError")
    try:
        img = process_image(fetched.body or b"", opts.image)
    except Filtered as exc:
        return filtered(exc.reason, str(exc))
    except ItemError as exc:
        return failed(exc.error_class, str(exc), type_=type(exc).__name__)
    meta = {**kept, "key": key, "row": row, "url": url, "caption": caption, "width": img.width,
            "height": img.height, "original_width": img.original_width,
            "original_height": img.original_height, "sha256": img.sha256, "status": "ok"}
    member = writer.add(key, img.data, img.ext, meta, caption)
    return ok([{"row": row, "url": url, "caption": caption, "shard": f"{shard:05d}", "member": member,
                "width": img.width, "height": img.height, "original_width": img.original_width,
                "original_height": img.original_height, "sha256": img.sha256,
                "bytes": len(img.data),
                "kept": json.dumps(kept, ensure_ascii=False) if kept else None}])


class DownloadJob(Job):
    name = "download"
    unit = "url"
    batch_size: int | None = 10_000
    manifest_fields = [
        pa.field("row", pa.int64()), pa.field("url", pa.string()), pa.field("caption", pa.string()),
        pa.field("shard", pa.string()), pa.field("member", pa.string()),
        pa.field("width", pa.int32()), pa.field("height", pa.int32()),
        pa.field("original_width", pa.int32()), pa.field("original_height", pa.int32()),
        pa.field("sha256", pa.string()), pa.field("bytes", pa.int64()),
        pa.field("kept", pa.string()),  # the --keep-cols as one JSON object
    ]

    def __init__(self, src: str | os.PathLike, dst: str | os.PathLike,
                 options: DownloadOptions | None = None):
        super().__init__(src, dst)
        self.opts = options or DownloadOptions()
        self.batch_size = self.opts.shard_size

    def validate(self) -> None:
        self.opts.validate()
        super().validate()
        if not self.src.is_file():
            raise UsageError(f"URLS must be a file (txt, csv, tsv, jsonl, parquet, optionally .gz): {self.src}")
        try:
            sniff_format(self.src) if self.opts.input_format is None else None
            rows = read_rows(self.src, self.opts.input_format, text_column=self.opts.url_col)
            next(rows, None)  # a list that is not what its name says is refused at once
            rows.close()
        except (ValueError, SourceError) as exc:
            raise UsageError(str(exc)) from exc

    def fingerprint(self) -> dict:
        return self.opts.fingerprint()

    def options(self) -> dict:
        return {**self.opts.fingerprint(), "shard_size": self.opts.shard_size,
                "fetch": dataclasses.asdict(self.opts.fetch)}

    def items(self) -> Iterator[Item]:
        keys = ContentKeys()
        try:
            rows = read_rows(self.src, self.opts.input_format, text_column=self.opts.url_col)
            for chunk in chunked(rows, 1024):
                parsed = [self._parse(row) for row in chunk]
                for key, (row, content, url, caption, kept, error) in zip(
                        keys.keys_for([p[1] for p in parsed]), parsed):
                    yield Item(key, (key, row, url, caption, kept, error), source=url or None,
                               columns={"row": row})
        finally:
            keys.close()

    def _parse(self, row: Any) -> tuple:
        """(row number, what identifies the row, url, caption, kept columns, error)."""
        o = self.opts
        if row.fields is None:
            return row.index, b"\0bad row\0" + (row.error or "").encode(), None, None, {}, row.error
        url = row.fields.get(o.url_col)
        url = str(url).strip() if url is not None else ""
        caption = row.fields.get(o.caption_col) if o.caption_col else None
        caption = None if caption is None else str(caption)
        kept = {c: _text(row.fields.get(c)) for c in o.keep_cols}
        error = None if url else f"row {row.index}: no URL in column {o.url_col!r}"
        content = json.dumps([url, caption, kept] if url else [row.fields], sort_keys=True,
                             default=str).encode("utf-8", "surrogatepass")
        return row.index, content, url, caption, kept, error

    def outputs(self, task_id: int, payloads: list) -> list[str]:
        return [shard_name(self.opts.output_format, task_id)]

    def count(self) -> int:
        return count_rows(self.src, self.opts.input_format)

    def report_names(self) -> list[str]:
        return ["failed_urls.txt"]

    def runner(self) -> TaskRunner:
        return TaskRunner(stream_fn=functools.partial(serve_shards, self.opts, self.dst))

    def task_timeout(self, item_timeout: float | None) -> float | None:
        """A backstop for a whole shard (each URL has its own total deadline)."""
        f = self.opts.fetch
        per_url = f.timeout * (f.retries + 1) + f.retries * max(f.max_backoff, f.max_retry_after)
        # + 1: a shard may start while the last URLs of the one before hold its worker's slots
        return (math.ceil(self.opts.shard_size / f.concurrency) + 1) * per_url + 120

    def reports(self, ledger: Any) -> None:
        with self.dst.atomic_path("failed_urls.txt") as tmp, open(tmp, "w", encoding="utf-8") as f:
            for row in ledger.iter_items("WHERE status='failed'"):
                if row["source"]:
                    f.write(row["source"] + "\n")

    def summary_lines(self, ledger: Any) -> list[str]:
        n = ledger.count_failed_with_source()
        return [f"images in {self.dst} as {self.opts.output_format} shards"] + (
            [f"{n} failed URLs listed in failed_urls.txt (usable as a new input)"] if n else [])

    def retry_matches(self, asked: str, error_class: str | None) -> bool:
        """`http_5xx` names every server error (http_500, http_503, ...)."""
        if asked == "http_5xx":
            return (error_class or "").startswith("http_5")
        return asked == error_class


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def download(urls: str | os.PathLike, dst: str | os.PathLike, **options: Any) -> RunReport:
    """Download the images of a URL list into `dst`.  Takes every option of `datamill download
    --help` by its name (url_col, format, resize, min_size, timeout, retries, ..., workers,
    quiet, limit, ...), with the same defaults; `image=ImageOptions(...)` and
    `fetch=FetchOptions(...)` are taken too.  `timeout` and `retries` are per URL.

    >>> datamill.download("urls.txt.gz", "images/", resize=256, min_size=100,
    ...                   format="webdataset")                                  # doctest: +SKIP
    """
    opts, run = split_flat([DownloadOptions, RunOptions], options)
    return run_job(DownloadJob(urls, dst, opts), run)
