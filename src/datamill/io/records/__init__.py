"""Record codecs of the `map` job: a user's records as parquet, webdataset, jsonl or pickle.

A record is a dict of field name -> value (str, bytes, int, float, bool, None, JSON
lists/dicts, NumPy arrays of bool/int/uint/float dtype); `Schema` fixes each field's type
from a job's first record (`schema.py` lists the kinds). Workers write records into part
files with `RecordWriter`; the driver has shards of an exact size assembled from slices of
parts with `write_shard`. Both give the same bytes for the same records in the same order
with the same schema, so a part that holds exactly one shard can be hard-linked into place.
Every file is written under a temporary name and renamed into place, never replacing a file.

Pure: no processes, no global state. Paths are local paths.

>>> schema = Schema.infer(first, "parquet", ragged=["mask"])          # doctest: +SKIP
>>> with RecordWriter("parquet", "out/part.parquet", schema) as w:      # doctest: +SKIP
...     for n, record in enumerate(records):
...         w.add(safe_key("clip.mp4", n), schema.conform(record, "parquet"))
>>> write_shard("parquet", "out/00000.parquet", schema,
...             [("out/part.parquet", 0, 100)])                         # doctest: +SKIP
FileInfo(records=100, bytes=..., sha256=...)
"""
from __future__ import annotations

from .formats import (
    FORMATS,
    SUFFIX,
    FileInfo,
    RecordWriter,
    read_records,
    read_shards,
    write_shard,
)
from .schema import RecordError, Schema, encoded_size, normalize, safe_key

__all__ = [
    "FORMATS",
    "SUFFIX",
    "FileInfo",
    "RecordError",
    "RecordWriter",
    "Schema",
    "encoded_size",
    "normalize",
    "read_records",
    "read_shards",
    "safe_key",
    "write_shard",
]
