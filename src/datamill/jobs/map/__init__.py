"""Job `map`: any function over any items into shards of an exact size (see job.py)."""
from __future__ import annotations

import os
from typing import Any, Callable, Iterable

from ...engine.run import RunOptions, RunReport, run_job
from ...io.records import read_shards
from ...options import parse_bytes, split_flat
from .job import MapJob
from .options import MapOptions

__all__ = ["map", "MapJob", "MapOptions", "read_shards"]


def map(fn: str | Callable, src: str | os.PathLike | Iterable, dst: str | os.PathLike, *,
        key: Callable[[Any], str] | None = None, **options: Any) -> RunReport:  # noqa: A001
    """Run `fn` over the items of `src` into shards in `dst`; returns the `RunReport`.

    `src`: a folder (each file's path is an item; `extensions=` filters), a list file (txt,
    csv, tsv, jsonl, parquet, optionally .gz: each row is an item, a dict; a txt line a
    string), or any Python iterable (an item's key is its position unless `key(item)` gives
    one; a resume assumes the iterable yields the same items in the same order).
    `fn(item)` returns a record (a dict of str, bytes, int, float, bool, None, lists and dicts
    of those, NumPy arrays), None (no record: the item is filtered), or an iterable of
    records; with `init=`, `fn(item, init())` where init runs once per worker.  `fn` and
    `init` are callables or "FILE.py:NAME" / "package.module:NAME".  Takes every option of
    `datamill map --help` by name (format, shard_size, shard_bytes, ordered, ragged,
    workers, limit, retry_failed, overwrite, quiet, ...), with the same defaults.

    >>> datamill.map(tokenize, "corpus.jsonl.gz", "tokens/", shard_size=10_000,
    ...              format="parquet", workers=8)                            # doctest: +SKIP
    """
    if isinstance(options.get("shard_bytes"), str):
        options["shard_bytes"] = parse_bytes(options["shard_bytes"])
    opts, run = split_flat([MapOptions, RunOptions], {"fn": fn, **options})
    return run_job(MapJob(src, dst, opts, key=key), run)
