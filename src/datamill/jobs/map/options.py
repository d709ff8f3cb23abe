"""The `map` job's options, declared once (the command line and `datamill.map` derive from
them)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...io.records import FORMATS
from ...io.sources import list_format_option
from ...options import OptionError, Options, comma_list, option, parse_bytes, parse_extensions


@dataclass(frozen=True)
class MapOptions(Options):
    fn: Any = option(None, "The function: FILE.py:NAME or package.module:NAME. fn(item) returns "
                     "a record (a dict), None (no record) or an iterable of records.",
                     metavar="FILE.py:NAME")
    init: Any = option(None, "Called once per worker (load a model); its result is passed "
                       "as fn(item, state).", metavar="FILE.py:NAME")
    extensions: tuple[str, ...] = option(
        (), "A folder SRC: only files with these extensions, comma-separated (default: all).",
        flag="--ext", parse=parse_extensions, multiple=True, fingerprint=False)
    input_format: str | None = list_format_option("A list SRC's format")
    output_format: str = option(
        "parquet", "Shards: parquet, webdataset (tar), jsonl or pickle (unsafe to load from "
        "strangers).", name="format", choices=FORMATS)
    shard_size: int = option(10_000, "Records per shard (every shard but the last).", min=1)
    shard_bytes: int | None = option(
        None, "Also end a shard at the first record that brings it to this size (256MB, 1GiB).",
        parse=parse_bytes, min=1, metavar="SIZE")
    ordered: bool = option(False, "Records in input order; the same shards, byte for byte, for "
                           "any worker count and after any resume.")
    ragged: tuple[str, ...] = option(
        (), "Array fields whose shape varies between records (stored as bytes, shape and "
        "dtype), comma-separated.", parse=comma_list)

    def check(self) -> None:
        if self.fn is None:
            raise OptionError("--fn is required: the function to run, as FILE.py:NAME or "
                              "package.module:NAME")
