"""Records as parquet rows: a ``__key__`` column, then one typed column per schema field.

=========  =====================================  ========================================
kind       Arrow column                           Hugging Face feature (schema metadata)
=========  =====================================  ========================================
str        string                                 Value("string")
bytes      binary                                 Value("binary")
int        int64                                  Value("int64")
float      float64                                Value("float64")
bool       bool                                   Value("bool")
null       null                                   Value("null")
json       string (the value's JSON text)         Value("string")
list       list<dtype>                            List(Value(dtype))
array      list<list<...dtype>> (ndim deep)       Array2D ... Array5D (shape, dtype)
ragged     struct{data: binary (C order),         {"data", "shape", "dtype"}
           shape: list<int64>, dtype: string}
=========  =====================================  ========================================

Each Arrow field carries its schema entry as JSON in its metadata (key ``datamill``), so
`decode_table` restores arrays with their exact dtype and shape. Rows are written in row
groups cut by one rule counted from the file's first record (`ROW_GROUP_ROWS` rows or
`ROW_GROUP_BYTES` of `encoded_size`, whichever comes first), zstd-compressed, with no
timestamp: the same records give the same bytes.
"""
from __future__ import annotations

import json
from typing import Any, BinaryIO, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .schema import KEY_FIELD, Schema, json_text

ROW_GROUP_ROWS = 10_000
ROW_GROUP_BYTES = 64 << 20
_META_KEY = b"datamill"
_VALUE_TYPES = {"str": pa.string(), "bytes": pa.binary(), "int": pa.int64(),
                "float": pa.float64(), "bool": pa.bool_(), "null": pa.null(),
                "json": pa.string()}
_HF_VALUE = {"str": "string", "bytes": "binary", "int": "int64", "float": "float64",
             "bool": "bool", "null": "null", "json": "string"}
_RAGGED_TYPE = pa.struct([pa.field("data", pa.binary()), pa.field("shape", pa.list_(pa.int64())),
                          pa.field("dtype", pa.string())])


def _hf_value(dtype: str) -> dict[str, str]:
    return {"dtype": dtype, "_type": "Value"}


def _hf_list(feature: dict[str, Any]) -> dict[str, Any]:
    return {"feature": feature, "_type": "List"}


def _hf_feature(spec: dict[str, Any]) -> dict[str, Any]:
    kind = spec["kind"]
    if kind == "list":
        return _hf_list(_hf_value(spec["dtype"]))
    if kind == "array":
        ndim = len(spec["shape"])
        if ndim <= 5:
            return {"shape": list(spec["shape"]), "dtype": spec["dtype"], "_type": f"Array{ndim}D"}
        feature = _hf_value(spec["dtype"])
        for _ in range(ndim):
            feature = _hf_list(feature)
        return feature
    if kind == "ragged":
        return {"data": _hf_value("binary"), "shape": _hf_list(_hf_value("int64")),
                "dtype": _hf_value("string")}
    return _hf_value(_HF_VALUE[kind])


def _arrow_type(spec: dict[str, Any]) -> pa.DataType:
    kind = spec["kind"]
    if kind in _VALUE_TYPES:
        return _VALUE_TYPES[kind]
    if kind == "ragged":
        return _RAGGED_TYPE
    t = pa.from_numpy_dtype(np.dtype(spec["dtype"]))
    for _ in range(1 if kind == "list" else len(spec["shape"])):
        t = pa.list_(t)
    return t


def arrow_schema(schema: Schema) -> pa.Schema:
    fields = [pa.field(KEY_FIELD, pa.string(), nullable=False)]
    features: dict[str, Any] = {KEY_FIELD: _hf_value("string")}
    for name, spec in schema.fields.items():
        metadata = {_META_KEY: json.dumps(spec).encode()}
        if spec["kind"] == "array" and len(spec["shape"]) <= 5:
            # Hugging Face takes its ArrayND feature from the metadata only when the column
            # is its extension type: this is how its own parquet files declare it.
            metadata[b"ARROW:extension:name"] = (
                b"datasets.features.features.Array%dDExtensionType" % len(spec["shape"]))
            metadata[b"ARROW:extension:metadata"] = json.dumps(
                [spec["shape"], spec["dtype"]]).encode()
        fields.append(pa.field(name, _arrow_type(spec), metadata=metadata))
        features[name] = _hf_feature(spec)
    hf = json.dumps({"info": {"features": features}}).encode()
    return pa.schema(fields, metadata={b"huggingface": hf})


def schema_of(arrow: pa.Schema) -> Schema:
    """The datamill schema a parquet file was written with (from its fields' metadata)."""
    fields = {}
    for f in arrow:
        if f.name != KEY_FIELD:
            fields[f.name] = json.loads(f.metadata[_META_KEY])
    return Schema(fields)


def _mask(values: list[Any]) -> pa.Array | None:
    if all(v is not None for v in values):
        return None
    return pa.array([v is None for v in values], pa.bool_())


def _array_column(spec: dict[str, Any], values: list[Any]) -> pa.Array:
    dtype = np.dtype(spec["dtype"])
    present = [v for v in values if v is not None]
    flat = np.concatenate([v.ravel() for v in present]) if present else np.empty(0, dtype)
    child: pa.Array = pa.array(flat.astype(dtype, copy=False))
    if spec["kind"] == "list":
        lengths = [0 if v is None else len(v) for v in values]
    else:
        shape = spec["shape"]
        count = len(present)
        for k in range(len(shape) - 1, 0, -1):  # the inner levels: every list has shape[k] items
            count_k = count * int(np.prod(shape[:k]))
            offsets = np.arange(count_k + 1, dtype=np.int32) * shape[k]
            child = pa.ListArray.from_arrays(pa.array(offsets), child)
        lengths = [0 if v is None else shape[0] for v in values]
    offsets = np.zeros(len(values) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), child, mask=_mask(values))


def _column(spec: dict[str, Any], values: list[Any]) -> pa.Array:
    kind = spec["kind"]
    if kind == "null":
        return pa.nulls(len(values))
    if kind == "json":
        return pa.array([None if v is None else json_text(v) for v in values], pa.string())
    if kind in ("list", "array"):
        return _array_column(spec, values)
    if kind == "ragged":
        children = [
            pa.array([None if v is None else v.tobytes() for v in values], pa.binary()),
            pa.array([None if v is None else list(v.shape) for v in values], pa.list_(pa.int64())),
            pa.array([None if v is None else v.dtype.name for v in values], pa.string()),
        ]
        return pa.StructArray.from_arrays(children, fields=list(_RAGGED_TYPE), mask=_mask(values))
    return pa.array(values, _VALUE_TYPES[kind])


class ParquetEncoder:
    """Buffers rows and writes them to `file` as row groups (see the module's docstring)."""

    def __init__(self, file: BinaryIO, schema: Schema):
        self.schema = schema
        self.arrow = arrow_schema(schema)
        self._writer = pq.ParquetWriter(file, self.arrow, compression="zstd")
        self._keys: list[str] = []
        self._columns: list[list[Any]] = [[] for _ in schema.fields]
        self._bytes = 0

    def add(self, key: str, values: list[Any], size: int) -> None:
        self._keys.append(key)
        for column, value in zip(self._columns, values):
            column.append(value)
        self._bytes += size
        if len(self._keys) >= ROW_GROUP_ROWS or self._bytes >= ROW_GROUP_BYTES:
            self._flush()

    def _flush(self) -> None:
        if not self._keys:
            return
        arrays = [pa.array(self._keys, pa.string())]
        arrays += [_column(spec, column)
                   for spec, column in zip(self.schema.fields.values(), self._columns)]
        table = pa.Table.from_arrays(arrays, schema=self.arrow)
        self._writer.write_table(table, row_group_size=len(self._keys))
        self._keys = []
        self._columns = [[] for _ in self.schema.fields]
        self._bytes = 0

    def finish(self) -> None:
        self._flush()
        self._writer.close()

    def discard(self) -> None:
        try:
            self._writer.close()
        except (OSError, pa.ArrowException):
            pass


def _decode_arrays(spec: dict[str, Any], column: pa.Array) -> list[Any]:
    dtype = np.dtype(spec["dtype"])
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    if spec["kind"] == "list":
        offsets = column.offsets.to_numpy()
        flat = np.asarray(column.values.to_numpy(zero_copy_only=False), dtype)
        return [flat[offsets[i]:offsets[i + 1]].copy() if ok else None
                for i, ok in enumerate(valid)]
    shape = tuple(spec["shape"])
    flat = column
    for _ in shape:
        flat = pc.list_flatten(flat)
    flat = np.asarray(flat.to_numpy(zero_copy_only=False), dtype)
    size = int(np.prod(shape))
    out: list[Any] = []
    j = 0
    for ok in valid:
        if ok:
            out.append(flat[j * size:(j + 1) * size].reshape(shape).copy())
            j += 1
        else:
            out.append(None)
    return out


def _decode_column(spec: dict[str, Any], column: pa.Array) -> list[Any]:
    kind = spec["kind"]
    if isinstance(column, pa.ExtensionArray):  # an ArrayND column once `datasets` is imported
        column = column.storage
    if kind in ("list", "array"):
        return _decode_arrays(spec, column)
    values = column.to_pylist()
    if kind == "json":
        return [None if v is None else json.loads(v) for v in values]
    if kind == "ragged":
        return [None if v is None else
                np.frombuffer(v["data"], np.dtype(v["dtype"])).reshape(v["shape"]).copy()
                for v in values]
    return values


def read_parquet(path: str, start: int, end: int | None) -> Iterator[tuple[str, dict[str, Any]]]:
    """(key, record) of rows [start, end) of a parquet file written by `ParquetEncoder`,
    reading one row group at a time."""
    f = pq.ParquetFile(path)
    schema = schema_of(f.schema_arrow)
    first = 0
    for group in range(f.num_row_groups):
        rows = f.metadata.row_group(group).num_rows
        lo, hi = max(start, first), rows + first if end is None else min(end, rows + first)
        if lo < hi:
            table = f.read_row_group(group).slice(lo - first, hi - lo).combine_chunks()
            keys = table.column(KEY_FIELD).to_pylist()
            columns = {name: _decode_column(spec, table.column(name).chunk(0))
                       for name, spec in schema.fields.items()}
            for i, key in enumerate(keys):
                yield key, {name: values[i] for name, values in columns.items()}
        first += rows
        if end is not None and first >= end:
            return
