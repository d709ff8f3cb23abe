"""Arrow columns from Python lists, built from buffers.

pyarrow's own conversion (`pa.array(list)`, `Table.from_pylist`, ...) imports pandas on its
first use when pandas is installed: 0.3-0.4 s in every process that writes a table (a run's
manifest, a worker's first part).  The columns built here never call it.  The bottom layer:
imports nothing of datamill.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pyarrow as pa

_INT32_MAX = 2**31 - 1


def strings(values: Sequence[Any], t: pa.DataType | None = None) -> pa.Array:
    """str values (UTF-8; or bytes with `t` pa.binary()), some None, as a string or binary
    array (pyarrow's own conversion past 2 GiB, which it chunks)."""
    t = pa.string() if t is None else t
    none = any(v is None for v in values)
    if t == pa.string():
        parts = [b"" if v is None else v.encode("utf-8") for v in values]
    else:
        parts = [b"" if v is None else v for v in values] if none else list(values)
    lengths = np.fromiter(map(len, parts), np.int64, len(parts))
    if int(lengths.sum()) > _INT32_MAX:
        return pa.array(values, t)
    offsets = np.zeros(len(parts) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:], dtype=np.int32)
    valid = np.fromiter((v is not None for v in values), bool, len(values)) if none else None
    bitmap = None if valid is None else pa.py_buffer(np.packbits(valid, bitorder="little"))
    nulls = 0 if valid is None else int(len(valid) - np.count_nonzero(valid))
    return pa.Array.from_buffers(t, len(parts), [bitmap, pa.py_buffer(offsets),
                                                 pa.py_buffer(b"".join(parts))],
                                 null_count=nulls)


def column(values: Sequence[Any], t: pa.DataType) -> pa.Array:
    """A column of `t` (string, binary, integer, floating point or bool; others through
    pyarrow's own conversion) from Python values, some None."""
    if pa.types.is_string(t) or pa.types.is_binary(t):
        return strings(values, t)
    if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
        return pa.array(values, t)
    none = any(v is None for v in values)
    dtype = np.bool_ if pa.types.is_boolean(t) else t.to_pandas_dtype()
    data = np.array([0 if v is None else v for v in values] if none else values, dtype)
    valid = np.fromiter((v is not None for v in values), bool, len(values)) if none else None
    bitmap = None if valid is None else pa.py_buffer(np.packbits(valid, bitorder="little"))
    nulls = 0 if valid is None else int(len(valid) - np.count_nonzero(valid))
    if pa.types.is_boolean(t):
        data = np.packbits(data, bitorder="little")
    return pa.Array.from_buffers(t, len(values), [bitmap, pa.py_buffer(data)], null_count=nulls)
