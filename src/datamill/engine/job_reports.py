"""The files that describe a whole job so far, rewritten from the ledger after each run:
manifest.parquet, failures.jsonl and stats.json."""
from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..columns import column, strings
from .ledger import Ledger, decode_records
from .dst import Dst
from .task import FAILED, OK

REPORT_NAMES = ("manifest.parquet", "failures.jsonl", "stats.json")
BASE_FIELDS = [pa.field("key", pa.string()), pa.field("source", pa.string()),
               pa.field("status", pa.string()), pa.field("reason", pa.string())]


def manifest_rows(row: dict, final_stage: str) -> list[dict]:
    """The manifest rows of one ledger item: its records (decoded) when ok, else one row."""
    base = {"key": row["key"], "source": row["source"], "status": row["status"],
            "reason": row["reason"]}
    records = row["records"]
    if row["status"] == OK and row["stage"] != final_stage:
        return []
    if not records or not isinstance(records, list):
        return [] if row["status"] == OK and records == [] else [base]
    out = []
    for rec in records:
        if isinstance(rec, dict):
            out.append({**base, "status": rec.get("status", row["status"]),
                        "reason": rec.get("reason", row["reason"]), **_without_base(rec)})
        else:
            out.append({**base, "value": rec})
    return out


def _without_base(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if k not in ("status", "reason", "message")}


def manifest_schema(fields: list[pa.Field]) -> pa.Schema:
    """The manifest's schema: the base columns and a job's `fields`, of types that pyarrow,
    pandas, DuckDB and Hugging Face `datasets` all read (no map or union: `datasets` has no
    equivalent; a job stores such a value as a JSON string)."""
    schema = pa.schema(BASE_FIELDS + list(fields))
    for f in schema:
        if _unreadable(f.type):
            raise TypeError(f"manifest column {f.name!r} of type {f.type}: Hugging Face datasets "
                            "cannot read it; store the value as a JSON string")
    return schema


def _unreadable(t: pa.DataType) -> bool:
    if pa.types.is_map(t) or pa.types.is_union(t):
        return True
    return any(_unreadable(t.field(i).type) for i in range(t.num_fields))


def _table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """`rows` as a table of `schema`, built column by column (datamill/columns.py: pyarrow's
    own conversion would import pandas, 0.4 s); a dict or list in a string column (a record
    written by an earlier version into the ledger, e.g. download's `kept` as a dict) becomes
    its JSON."""
    cols = []
    for f in schema:
        values = [r.get(f.name) for r in rows]
        if pa.types.is_string(f.type):
            values = [json.dumps(v, ensure_ascii=False) if isinstance(v, (dict, list)) else v
                      for v in values]
        cols.append(column(values, f.type))
    return pa.Table.from_arrays(cols, schema=schema)


def write_manifest(ledger: Ledger, dst: Dst, fields: list[pa.Field], final_stage: str) -> int:
    """DST/manifest.parquet; returns its number of rows.  An item without records is one
    row of the base columns, gathered column by column (a million items of the map job
    take seconds, not minutes)."""
    schema = manifest_schema(fields)
    n = 0
    with dst.atomic_path("manifest.parquet") as tmp:
        with pq.ParquetWriter(tmp, schema) as writer:
            batch: list[dict] = []
            plain: list[tuple] = []  # (key, source, status, reason) of items without records
            encoded: list[tuple] = []  # items with records, decoded together into `batch`

            def decode() -> None:
                for (key, source, status, reason, _, stage), records in zip(
                        encoded, decode_records([row[4] for row in encoded])):
                    batch.extend(manifest_rows({"key": key, "source": source, "status": status,
                                                "reason": reason, "records": records,
                                                "stage": stage}, final_stage))
                encoded.clear()

            def flush() -> None:
                nonlocal n, batch, plain
                decode()
                if plain:
                    cols = list(zip(*plain))
                    table = pa.table([strings(c) for c in cols]
                                     + [pa.nulls(len(plain), f.type) for f in fields],
                                     schema=schema)
                    writer.write_table(table)
                    n += len(plain)
                    plain = []
                if batch:
                    writer.write_table(_table(batch, schema))
                    n += len(batch)
                    batch = []

            for row in ledger.iter_rows(("key", "source", "status", "reason", "records", "stage")):
                key, source, status, reason, records, stage = row
                if records is None and not (status == OK and stage != final_stage):
                    if batch or encoded:
                        flush()  # rows stay in key order
                    plain.append((key, source, status, reason))
                else:
                    if plain:
                        flush()
                    encoded.append(row)
                if len(batch) + len(encoded) + len(plain) >= 10_000:
                    flush()
            flush()
            if n == 0:
                writer.write_table(_table([], schema))
    return n


def write_failures(ledger: Ledger, dst: Dst) -> int:
    """DST/failures.jsonl; returns its number of lines."""
    n = 0
    with dst.atomic_path("failures.jsonl") as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in ledger.iter_items("WHERE status=?", (FAILED,)):
            f.write(json.dumps({
                "key": row["key"], "source": row["source"], "error_class": row["reason"],
                "error_type": row["error_type"], "message": row["message"],
                "traceback": row["traceback"], "attempts": row["attempts"],
            }, ensure_ascii=False) + "\n")
            n += 1
    return n


def write_stats(dst: Dst, stats: dict[str, Any]) -> None:
    text = json.dumps(stats, indent=2, sort_keys=False, default=str) + "\n"
    dst.write_bytes("stats.json", text.encode("utf-8"))
