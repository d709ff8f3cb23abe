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

from ...columns import strings
from .schema import KEY_FIELD, Schema, json_text

ROW_GROUP_ROWS = 10_000
ROW_GROUP_BYTES = 64 << 20
_META_KEY = b"datamill"
_VALUE_TYPES = {"str": pa.string(), "bytes": pa.binary(), "int": pa.int64(),
                "float": pa.float64(), "bool": pa.bool_(), "null": pa.null(),
                "json": pa.string()}
_HF_VALUE = {"str": "string", "bytes": "binary", "int": "int64", "float": "float64",
             "bool": "bool", "null": "null", "json": "string"}
_NONE_TYPE = type(None)
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


# Arrow arrays are built from their buffers here, not with `pa.array`: it costs less, and
# `pa.array` imports pandas when it is installed (~0.5 s in each new worker process).
_INT32_MAX = (1 << 31) - 1


def _buffer(array: np.ndarray) -> pa.Buffer:
    return pa.py_buffer(np.ascontiguousarray(array))


def _valid(values: list[Any]) -> np.ndarray | None:
    """Which values are not None; None when all are not."""
    if _NONE_TYPE not in map(type, values):  # types compare by identity (arrays would not)
        return None
    return np.fromiter((v is not None for v in values), bool, len(values))


def _bitmap(valid: np.ndarray | None) -> pa.Buffer | None:
    return None if valid is None else _buffer(np.packbits(valid, bitorder="little"))


def _nulls(valid: np.ndarray | None) -> int:
    return 0 if valid is None else int(len(valid) - np.count_nonzero(valid))


def _mask(valid: np.ndarray | None) -> pa.Array | None:
    """The `mask` argument of `from_arrays`: true where a value is None."""
    if valid is None:
        return None
    return _numeric(pa.bool_(), ~valid)


def _numeric(t: pa.DataType, data: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    """A 1-D NumPy array (of `t`'s dtype; bool for pa.bool_()) as an Arrow array."""
    n = len(data)
    if t == pa.bool_():
        data = np.packbits(data.astype(bool, copy=False), bitorder="little")
    return pa.Array.from_buffers(t, n, [_bitmap(valid), _buffer(data)], null_count=_nulls(valid))


def _offsets(lengths: np.ndarray) -> pa.Array:
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if offsets[-1] > _INT32_MAX:
        raise OverflowError("more than 2**31 - 1 values in a list column of one row group")
    return _numeric(pa.int32(), offsets.astype(np.int32))


def _binary(t: pa.DataType, values: list[Any]) -> pa.Array:
    """str (UTF-8) or bytes values, some None, as a string or binary array."""
    return strings(values, t)


def _scalars(t: pa.DataType, dtype: type, values: list[Any]) -> pa.Array:
    valid = _valid(values)
    if valid is not None:
        values = [0 if v is None else v for v in values]
    return _numeric(t, np.array(values, dtype), valid)


def _list(lengths: np.ndarray, child: pa.Array, valid: np.ndarray | None) -> pa.Array:
    if valid is not None:
        full = np.zeros(len(valid), np.int64)
        full[valid] = lengths
        lengths = full
    return pa.ListArray.from_arrays(_offsets(lengths), child, mask=_mask(valid))


def _array_column(spec: dict[str, Any], values: list[Any]) -> pa.Array:
    dtype = np.dtype(spec["dtype"])
    valid = _valid(values)
    present = values if valid is None else [v for v in values if v is not None]
    if spec["kind"] == "list":
        flat = np.concatenate(present) if present else np.empty(0, dtype)
        lengths = np.fromiter(map(len, present), np.int64, len(present))
    else:
        shape = spec["shape"]
        flat = (np.concatenate(present).reshape(-1) if present and shape[0]
                else np.empty(0, dtype))
        lengths = np.full(len(present), shape[0], np.int64)
    child = _numeric(pa.from_numpy_dtype(dtype), flat.astype(dtype, copy=False))
    if spec["kind"] == "array":
        count = len(present)
        for k in range(len(shape) - 1, 0, -1):  # the inner levels: every list has shape[k] items
            count_k = count * int(np.prod(shape[:k]))
            child = pa.ListArray.from_arrays(
                _offsets(np.full(count_k, shape[k], np.int64)), child)
    return _list(lengths, child, valid)


def _column(spec: dict[str, Any], values: list[Any]) -> pa.Array:
    kind = spec["kind"]
    if kind == "null":
        return pa.nulls(len(values))
    if kind in ("str", "json"):
        if kind == "json":
            values = [None if v is None else json_text(v) for v in values]
        return _binary(pa.string(), values)
    if kind == "bytes":
        return _binary(pa.binary(), values)
    if kind in ("list", "array"):
        return _array_column(spec, values)
    if kind == "ragged":
        valid = _valid(values)
        present = values if valid is None else [v for v in values if v is not None]
        shapes = [d for v in present for d in v.shape]
        children = [
            _binary(pa.binary(), [None if v is None else v.tobytes() for v in values]),
            _list(np.fromiter((v.ndim for v in present), np.int64, len(present)),
                  _numeric(pa.int64(), np.array(shapes, np.int64)), valid),
            _binary(pa.string(), [None if v is None else v.dtype.name for v in values]),
        ]
        return pa.StructArray.from_arrays(children, fields=list(_RAGGED_TYPE), mask=_mask(valid))
    if kind == "int":
        return _scalars(pa.int64(), np.int64, values)
    if kind == "float":
        return _scalars(pa.float64(), np.float64, values)
    if kind == "bool":
        return _scalars(pa.bool_(), np.bool_, values)
    return pa.array(values, _VALUE_TYPES[kind])


def _storage(column: pa.ChunkedArray) -> pa.ChunkedArray:
    if isinstance(column.type, pa.ExtensionType):  # ArrayND once `datasets` is imported
        return pa.chunked_array([c.storage for c in column.chunks], column.type.storage_type)
    return column


def _row_sizes(spec: dict[str, Any], column: pa.ChunkedArray) -> np.ndarray:
    """`values_size` of each value of a column, as `_decode_column` would give them."""
    kind = spec["kind"]
    n = len(column)
    if kind == "null":
        return np.zeros(n, np.int64)
    valid = np.asarray(column.is_valid().to_numpy(zero_copy_only=False), np.int64)
    if kind in ("str", "bytes", "json"):  # UTF-8 length; json: its text is json_text's
        return pc.binary_length(column).fill_null(0).to_numpy().astype(np.int64)
    if kind in ("int", "float", "bool"):
        return valid * 8
    if kind == "ragged":
        data = pc.struct_field(column, "data")
        return pc.binary_length(data).fill_null(0).to_numpy().astype(np.int64) * valid
    itemsize = np.dtype(spec["dtype"]).itemsize
    if kind == "list":
        return pc.list_value_length(column).fill_null(0).to_numpy().astype(np.int64) * itemsize
    return valid * (int(np.prod(spec["shape"])) * itemsize)


def writer_options(schema: Schema) -> dict[str, Any]:
    """How each column is written, by what it holds: text, bytes and numbers are dictionary
    encoded and zstd compressed; arrays are not dictionary encoded (millions of values: the
    dictionary costs a pass and is abandoned), and arrays of floats are stored uncompressed
    (their bits do not compress, and zstd would halve the write speed of large records);
    integer and bool arrays (token ids, masks, images) are compressed."""
    arrays = [n for n, spec in schema.fields.items() if spec["kind"] in ("list", "array", "ragged")]
    floats = {n for n in arrays if schema.fields[n]["kind"] != "ragged"
              and np.dtype(schema.fields[n]["dtype"]).kind in "fc"}
    compression = {"__key__": "zstd"}
    compression.update({n: "none" if n in floats else "zstd" for n in schema.fields})
    return {"compression": compression,
            "use_dictionary": ["__key__"] + [n for n in schema.fields if n not in arrays]}


class ParquetEncoder:
    """Buffers rows and writes them to `file` as row groups (see the module's docstring)."""

    def __init__(self, file: BinaryIO, schema: Schema):
        self.schema = schema
        self.arrow = arrow_schema(schema)
        self._writer = pq.ParquetWriter(file, self.arrow, **writer_options(schema))
        self._tables: list[pa.Table] = []  # rows taken as Arrow slices (merges), in order
        self._keys: list[str] = []         # then rows added one by one
        self._columns: list[list[Any]] = [[] for _ in schema.fields]
        self._rows = 0
        self._bytes = 0

    def add(self, key: str, values: list[Any], size: int) -> None:
        self._keys.append(key)
        for column, value in zip(self._columns, values):
            column.append(value)
        self._rows += 1
        self._bytes += size
        if self._rows >= ROW_GROUP_ROWS or self._bytes >= ROW_GROUP_BYTES:
            self._flush()

    def copy_from(self, path: str, start: int, end: int) -> int | None:
        """Append rows [start, end) of parquet file `path` (written by this encoder with a
        schema ours covers) as Arrow data, with the same row groups and bytes as `add` of
        their decoded records would give; the number of rows, or None when the file's
        schema is not covered (the caller then decodes the rows, which says why)."""
        f = pq.ParquetFile(path)
        theirs = schema_of(f.schema_arrow)
        if not self.schema.covers(theirs):
            return None
        groups, first = [], 0
        for group in range(f.num_row_groups):
            rows = f.metadata.row_group(group).num_rows
            if first < end and start < first + rows:
                if not groups:
                    offset = start - first
                groups.append(group)
            first += rows
        if not groups:
            return 0
        table = f.read_row_groups(groups)
        table = table.slice(offset, min(end, first) - start)
        n = table.num_rows
        columns = [table.column(KEY_FIELD)]
        sizes = np.full(n, sum(map(len, self.schema.fields)), np.int64)
        for (name, spec), field in zip(self.schema.fields.items(), list(self.arrow)[1:]):
            if theirs.fields.get(name) == spec:
                column = _storage(table.column(name))
                if column.type != field.type:
                    column = column.cast(field.type)
                sizes += _row_sizes(spec, column)
            else:  # missing, or None throughout in that file
                column = pa.chunked_array([pa.nulls(n, field.type)], field.type)
            columns.append(column)
        self._append(pa.Table.from_arrays(columns, schema=self.arrow), sizes)
        return n

    def _append(self, table: pa.Table, sizes: np.ndarray) -> None:
        """Buffer `table` (rows with `sizes`), cutting row groups as `add` does."""
        if self._keys:
            self._tables.append(self._python_table())
        start, n = 0, table.num_rows
        while start < n:
            take = min(ROW_GROUP_ROWS - self._rows, n - start)
            ends = np.cumsum(sizes[start:start + take]) + self._bytes
            full = int(np.searchsorted(ends, ROW_GROUP_BYTES))  # first row reaching it
            if full < take:
                take = full + 1
            self._tables.append(table.slice(start, take))
            self._rows += take
            self._bytes = int(ends[take - 1])
            start += take
            if self._rows >= ROW_GROUP_ROWS or self._bytes >= ROW_GROUP_BYTES:
                self._flush()

    def _python_table(self) -> pa.Table:
        arrays = [_binary(pa.string(), self._keys)]
        arrays += [_column(spec, column)
                   for spec, column in zip(self.schema.fields.values(), self._columns)]
        self._keys = []
        self._columns = [[] for _ in self.schema.fields]
        return pa.Table.from_arrays(arrays, schema=self.arrow)

    def _flush(self) -> None:
        tables = self._tables
        if self._keys:
            tables.append(self._python_table())
        if not tables:
            return
        table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
        # one chunk per column, as when built from Python values: the same pages, same bytes
        table = table.combine_chunks()
        self._writer.write_table(table, row_group_size=table.num_rows)
        self._tables = []
        self._rows = 0
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
