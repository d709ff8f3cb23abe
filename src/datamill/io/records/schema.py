"""What a record may hold, and a job's schema: the type of each field, fixed by its first record.

A record is a dict of field name -> value; a value is one of the kinds below. NumPy scalars
and 0-d arrays count as the matching Python scalar, tuples as lists, bytearray and
memoryview as bytes (`normalize` converts them, so the same values always give the same
bytes whatever objects held them).

=========  ===========================================  ====================================
kind       value                                        also in the schema
=========  ===========================================  ====================================
str        str
bytes      bytes
int        int (bool is its own kind)
float      float
bool       bool
null       None (the first record had None: any later   (`merge` replaces it with a type)
           value but None is a schema mismatch)
json       a list or dict of JSON values (str keys)
list       a 1-D NumPy array of any length              dtype
array      an N-D NumPy array (N >= 2), fixed shape      dtype, shape
ragged     a NumPy array of any shape and dtype (the
           fields listed in `ragged`)
=========  ===========================================  ====================================

Any field may be None in any record (and missing: it reads back as None).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np

from datamill.errors import ItemError

KEY_FIELD = "__key__"
_WDS_NAME_RE = re.compile(r"[A-Za-z0-9_-]+")
_SAFE_KEY_RE = re.compile(r"[^A-Za-z0-9_-]")
_INT64 = (-(1 << 63), (1 << 63) - 1)
_DTYPE_KINDS = "biuf"  # bool, signed and unsigned ints, floats (complex: not in parquet)
_SCALAR_KINDS = {str: "str", bytes: "bytes", int: "int", float: "float", bool: "bool",
                 type(None): "null", list: "json", dict: "json"}
_ALTERNATIVES = "parquet, webdataset or pickle"


class RecordError(ItemError):
    """A record the job cannot write: error class ``bad_record`` (not a dict of usable field
    names), ``unsupported_type`` (a value of a type the format cannot store) or
    ``schema_mismatch`` (a field or type that differs from the job's schema)."""

    def __init__(self, message: str, error_class: str):
        super().__init__(message, error_class=error_class)


def json_text(value: Any) -> str:
    """The JSON text of a json-kind value, the same whatever objects held it."""
    return json.dumps(value, sort_keys=False, separators=(",", ":"), ensure_ascii=False)


def safe_key(item_key: str, n: int) -> str:
    """The key of record `n` of item `item_key`: ``<item key>_<n>`` with every character but
    [A-Za-z0-9_-] written as %XX (the bytes of its UTF-8), so that the key is a valid
    webdataset member stem (no '.', '/', whitespace) and distinct items give distinct keys.

    >>> safe_key("clips/a b.mp4", 3)
    'clips%2Fa%20b%2Emp4_3'
    """
    escaped = _SAFE_KEY_RE.sub(
        lambda m: "".join(f"%{b:02X}" for b in m.group().encode("utf-8", "surrogatepass")),
        item_key)
    return f"{escaped}_{int(n)}"


def describe(value: Any) -> str:
    """A value's type for messages: 'int', 'None', 'float32 array of shape (2, 3)'."""
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {tuple(value.shape)}"
    if value is None:
        return "None"
    return type(value).__name__


def normalize(record: Any, fmt: str) -> dict[str, Any]:
    """`record` with every value as its plain Python type (or a native-order C-contiguous
    NumPy array); RecordError for what no schema could accept in format `fmt`."""
    if not isinstance(record, Mapping):
        raise RecordError(f"a record must be a dict of field name -> value, got "
                          f"{type(record).__name__}", "bad_record")
    out: dict[str, Any] = {}
    for name, value in record.items():
        if not isinstance(name, str):
            raise RecordError(f"field names must be str, got {name!r} "
                              f"({type(name).__name__})", "bad_record")
        if name == KEY_FIELD:
            raise RecordError(f"field name {KEY_FIELD!r} is reserved for the record's key",
                              "bad_record")
        if not name:
            raise RecordError("a field name is empty", "bad_record")
        if fmt == "webdataset" and not _WDS_NAME_RE.fullmatch(name):
            raise RecordError(f"field {name!r}: a webdataset field name is made of "
                              "A-Z a-z 0-9 _ - only (it becomes part of a tar member name)",
                              "bad_record")
        out[name] = _normalize_value(name, value, fmt)
    return out


def _normalize_value(name: str, value: Any, fmt: str) -> Any:
    t = type(value)
    if t is str:
        _check_text(name, value)
        return value
    if t is int or t is float or t is bool or value is None:
        return value
    if isinstance(value, np.ndarray):
        if value.ndim == 0:
            return _normalize_value(name, value[()], fmt)
        if value.dtype.kind not in _DTYPE_KINDS + "c":
            raise RecordError(f"field {name!r}: {value.dtype} arrays are not supported "
                              "(only bool, int, uint and float dtypes)", "unsupported_type")
        if fmt == "jsonl":
            raise RecordError(f"field {name!r}: {describe(value)} cannot be stored in jsonl; "
                              f"use {_ALTERNATIVES}", "unsupported_type")
        if not value.dtype.isnative:
            value = value.astype(value.dtype.newbyteorder("="))
        return np.ascontiguousarray(value)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, str):
        _check_text(name, value)
        return "" + value
    if isinstance(value, (bytes, bytearray, memoryview)):
        if fmt == "jsonl":
            raise RecordError(f"field {name!r}: bytes cannot be stored in jsonl; use "
                              f"{_ALTERNATIVES}", "unsupported_type")
        return bytes(value)
    if isinstance(value, (list, tuple, dict)):
        return _normalize_json(name, value)
    raise RecordError(f"field {name!r}: values of type {type(value).__name__} are not "
                      "supported (str, bytes, int, float, bool, None, JSON lists/dicts, "
                      "NumPy arrays)", "unsupported_type")


def _check_text(name: str, value: str) -> None:
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise RecordError(f"field {name!r}: a str that is not valid Unicode (a lone "
                              "surrogate) cannot be stored", "unsupported_type") from None


def _normalize_json(name: str, value: Any) -> Any:
    if value is None or type(value) in (str, int, float, bool):
        if type(value) is str:
            _check_text(name, value)
        return value
    if isinstance(value, (list, tuple)):
        return [_normalize_json(name, v) for v in value]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise RecordError(f"field {name!r}: a dict key {k!r} ({type(k).__name__}) "
                                  "in a JSON value; keys must be str", "unsupported_type")
            out["" + k] = _normalize_json(name, v)
        return out
    if isinstance(value, np.ndarray) and value.ndim > 0:
        raise RecordError(f"field {name!r}: a NumPy array inside a list or dict is not "
                          "supported; make it a field of its own", "unsupported_type")
    if isinstance(value, (np.generic, np.ndarray, str, int, float)):
        plain = _normalize_value(name, value, "json")
        if type(plain) in (str, int, float, bool):
            return plain
    raise RecordError(f"field {name!r}: {type(value).__name__} inside a list or dict is not "
                      "a JSON value (str, int, float, bool, None, list, dict)",
                      "unsupported_type")


def encoded_size(record: Mapping[str, Any]) -> int:
    """The size of a normalised record's payload, the same in every format: per field, the
    length of its name plus the UTF-8 length of a str or JSON text, len of bytes, nbytes of
    an array, 8 for a number or bool, 0 for None."""
    return sum(map(len, record)) + values_size(record.values())


def values_size(values: Iterable[Any]) -> int:
    """`encoded_size` without the field names: the sizes of normalised values."""
    size = 0
    for value in values:
        if value is None:
            continue
        t = type(value)
        if t is np.ndarray:
            size += value.nbytes
        elif t is str:
            size += len(value) if value.isascii() else len(value.encode("utf-8"))
        elif t is bytes:
            size += len(value)
        elif t is list or t is dict:
            size += len(json_text(value).encode("utf-8"))
        elif isinstance(value, np.ndarray):
            size += value.nbytes
        else:
            size += 8
    return size


# -- the fast path of `Schema.conform` -------------------------------------------------------
# Per schema and format, one checker per field that takes a value already in its normal form
# (or a NumPy scalar of the field's kind) and returns it normalised, or `_SLOW` for anything
# else: then the whole record goes through `normalize` and `_check`, which give the result
# or the error. So the fast path changes no result and no message, it only skips work.

_SLOW = object()
_NP_INTS = frozenset({np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
                      np.uint64, np.intc, np.uintc, np.int_, np.uint, np.longlong,
                      np.ulonglong})
_NP_FLOATS = frozenset({np.float16, np.float32, np.float64})


def _fast_str(value: Any) -> Any:
    if type(value) is str:
        if value.isascii():
            return value
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return _SLOW
        return value
    return _SLOW


def _fast_bytes(value: Any) -> Any:
    return value if type(value) is bytes else _SLOW


def _fast_number(py_type: type, np_types: Any) -> Any:
    """A checker passing a value of `py_type` as it is and one of `np_types` as `py_type`."""
    def check(value: Any) -> Any:
        t = type(value)
        if t is py_type:
            return value
        if t in np_types:
            return py_type(value)
        return _SLOW
    return check


_fast_float = _fast_number(float, _NP_FLOATS)
_fast_bool = _fast_number(bool, (np.bool_,))
_fast_int = _fast_number(int, _NP_INTS)


def _fast_int64(value: Any) -> Any:
    t = type(value)
    if t is not int:
        if t not in _NP_INTS:
            return _SLOW
        value = int(value)
    return value if _INT64[0] <= value <= _INT64[1] else _SLOW


def _fast_never(value: Any) -> Any:
    return _SLOW


def _fast_checker(name: str, spec: Mapping[str, Any], fmt: str) -> Any:
    kind = spec["kind"]
    if kind == "str":
        return _fast_str
    if kind == "bytes":
        return _fast_never if fmt == "jsonl" else _fast_bytes
    if kind == "int":
        return _fast_int64 if fmt == "parquet" else _fast_int
    if kind == "float":
        return _fast_float
    if kind == "bool":
        return _fast_bool
    if kind == "json":
        def check_json(value: Any) -> Any:
            if type(value) is list or type(value) is dict:
                try:
                    return _normalize_json(name, value)
                except RecordError:
                    return _SLOW
            return _SLOW
        return check_json
    if kind not in ("list", "array", "ragged") or fmt == "jsonl":
        return _fast_never
    if kind == "ragged":
        kinds = _DTYPE_KINDS + "c"

        def check_ragged(value: Any) -> Any:
            if type(value) is np.ndarray and value.ndim and value.flags.c_contiguous:
                dtype = value.dtype
                if dtype.kind in kinds and dtype.isnative:
                    return value
            return _SLOW
        return check_ragged
    try:
        dtype = np.dtype(spec["dtype"])
    except TypeError:
        return _fast_never
    if dtype.kind not in _DTYPE_KINDS + ("" if fmt == "parquet" else "c"):
        return _fast_never
    if kind == "list":
        def check_list(value: Any) -> Any:
            if type(value) is np.ndarray and value.ndim == 1 and \
                    (value.dtype is dtype or value.dtype == dtype) and value.flags.c_contiguous:
                return value
            return _SLOW
        return check_list
    shape = tuple(spec["shape"])

    def check_array(value: Any) -> Any:
        if type(value) is np.ndarray and value.shape == shape and \
                (value.dtype is dtype or value.dtype == dtype) and value.flags.c_contiguous:
            return value
        return _SLOW
    return check_array


def _valid_name(name: Any, fmt: str) -> bool:
    return isinstance(name, str) and bool(name) and name != KEY_FIELD and \
        (fmt != "webdataset" or _WDS_NAME_RE.fullmatch(name) is not None)


def value_spec(name: str, value: Any, fmt: str, ragged: bool) -> dict[str, Any]:
    """The schema entry of a normalised value."""
    if ragged:
        if value is not None and not isinstance(value, np.ndarray):
            raise RecordError(f"field {name!r}: {describe(value)} here, but the field is "
                              "listed in `ragged` (NumPy arrays only)", "schema_mismatch")
        return {"kind": "ragged"}
    if isinstance(value, np.ndarray):
        if fmt == "parquet" and value.dtype.kind == "c":
            raise RecordError(f"field {name!r}: parquet has no {value.dtype} type; list the "
                              "field in `ragged` (--ragged) to store it as bytes, or use "
                              "webdataset or pickle", "unsupported_type")
        if value.ndim == 1:
            return {"kind": "list", "dtype": value.dtype.name}
        return {"kind": "array", "dtype": value.dtype.name, "shape": list(value.shape)}
    kind = _SCALAR_KINDS[type(value)]
    if kind == "int" and fmt == "parquet" and not _INT64[0] <= value <= _INT64[1]:
        raise RecordError(f"field {name!r}: int {value} does not fit parquet's int64; "
                          "use a str, or webdataset, jsonl or pickle", "unsupported_type")
    return {"kind": kind}


def _spec_text(spec: Mapping[str, Any]) -> str:
    kind = spec["kind"]
    if kind == "null":
        return "None"
    if kind == "json":
        return "list/dict"
    if kind == "list":
        return f"1-D {spec['dtype']} array"
    if kind == "array":
        return f"{spec['dtype']} array of shape {tuple(spec['shape'])}"
    if kind == "ragged":
        return "array (ragged)"
    return kind


def _value_text(spec: Mapping[str, Any], value: Any) -> str:
    if spec["kind"] == "json":
        return type(value).__name__
    if spec["kind"] == "list":
        return f"1-D {value.dtype} array"
    return _spec_text(spec)


@dataclass(eq=False)
class Schema:
    """The ordered fields of a job's records: name -> {"kind": ..., "dtype": ..., "shape": ...}.

    >>> s = Schema.infer({"score": 0.5, "emb": np.zeros(4, np.float32)}, "parquet")
    >>> s.fields
    {'score': {'kind': 'float'}, 'emb': {'kind': 'list', 'dtype': 'float32'}}
    >>> Schema.from_json(s.to_json()) == s
    True
    """

    fields: dict[str, dict[str, Any]] = field(default_factory=dict)
    # fmt -> (the `fields` it was made from, their names, [(name, checker)] or None)
    _plans: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schema) and list(self.fields.items()) == list(other.fields.items())

    def __getstate__(self) -> dict[str, Any]:
        return {"fields": self.fields}  # not the cached checkers (closures)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.fields = state["fields"]
        self._plans = {}

    @classmethod
    def infer(cls, record: Any, fmt: str, ragged: Iterable[str] = ()) -> "Schema":
        """The schema fixed by a job's first record; the fields in `ragged` are arrays whose
        shape (and dtype) may vary from record to record."""
        values = normalize(record, fmt)
        if not values:
            raise RecordError("a record has no fields", "bad_record")
        ragged = set(ragged)
        return cls({name: value_spec(name, value, fmt, name in ragged)
                    for name, value in values.items()})

    def conform(self, record: Any, fmt: str) -> dict[str, Any]:
        """`record` normalised, with every field of the schema in its order (a missing field
        as None); RecordError if it does not fit the schema."""
        plan = self._plans.get(fmt)
        if plan is None or plan[0] is not self.fields:
            plan = self._plan(fmt)
        checks = plan[2]
        if checks is not None and type(record) is dict and record.keys() <= plan[1]:
            out = {}
            get = record.get
            for name, check in checks:
                value = get(name)
                if value is not None:
                    value = check(value)
                    if value is _SLOW:
                        break
                out[name] = value
            else:
                return out
        return self._conform(record, fmt)

    def _plan(self, fmt: str) -> tuple[Any, ...]:
        fields = self.fields
        checks = None
        if all(_valid_name(name, fmt) for name in fields):
            checks = [(name, _fast_checker(name, spec, fmt)) for name, spec in fields.items()]
        plan = (fields, frozenset(fields), checks)
        self._plans[fmt] = plan
        return plan

    def _conform(self, record: Any, fmt: str) -> dict[str, Any]:
        values = normalize(record, fmt)
        for name in values:
            if name not in self.fields:
                raise RecordError(
                    f"field {name!r} is not in the job's schema (fixed by its first record: "
                    f"{', '.join(map(repr, self.fields))})", "schema_mismatch")
        out = {}
        for name, spec in self.fields.items():
            value = values.get(name)
            if value is not None:
                self._check(name, spec, value, fmt)
            out[name] = value
        return out

    @staticmethod
    def _check(name: str, spec: Mapping[str, Any], value: Any, fmt: str) -> None:
        kind = spec["kind"]
        if kind == "ragged":
            value_spec(name, value, fmt, True)
            return
        got = value_spec(name, value, fmt, False)
        if got == spec:
            return
        if got["kind"] == kind == "array" and got["dtype"] == spec["dtype"] and \
                len(got["shape"]) == len(spec["shape"]):
            raise RecordError(
                f"field {name!r}: array of shape {tuple(got['shape'])} here, "
                f"{tuple(spec['shape'])} in the job's schema (fixed by its first record); "
                f"list the field in `ragged` (--ragged {name}) to allow shapes that vary",
                "schema_mismatch")
        hint = ""
        if kind == "null":
            hint = " (its first record had None there)"
        raise RecordError(
            f"field {name!r}: {_value_text(got, value)} here, {_spec_text(spec)} in the "
            f"job's schema (fixed by its first record){hint}", "schema_mismatch")

    def merge(self, other: "Schema") -> "Schema":
        """This schema completed by `other`'s (a later part's): a field None in one and typed
        in the other takes the type; any other difference, or a field `other` adds, is a
        RecordError (schema_mismatch)."""
        fields = dict(self.fields)
        for name, spec in other.fields.items():
            mine = fields.get(name)
            if mine is None:
                raise RecordError(f"field {name!r} is not in the job's schema (fixed by its "
                                  f"first record: {', '.join(map(repr, self.fields))})",
                                  "schema_mismatch")
            if mine == spec or spec["kind"] == "null":
                continue
            if mine["kind"] == "null":
                fields[name] = spec
                continue
            raise RecordError(f"field {name!r}: {_spec_text(spec)} in one part, "
                              f"{_spec_text(mine)} in the job's schema", "schema_mismatch")
        return Schema(fields)

    def covers(self, other: "Schema") -> bool:
        """Whether a file written with schema `other` can be rewritten with this one: its
        fields are among these, each of the same type or None throughout."""
        return all(name in self.fields and (spec == self.fields[name] or spec["kind"] == "null")
                   for name, spec in other.fields.items())

    def to_json(self) -> dict[str, Any]:
        return {"fields": [{"name": name, **spec} for name, spec in self.fields.items()]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Schema":
        fields = {}
        for entry in data["fields"]:
            entry = dict(entry)
            fields[entry.pop("name")] = entry
        return cls(fields)
