"""Writing and reading record files (parts and shards) in the four formats.

webdataset: a tar with, per record and in schema order, one member ``KEY.FIELD.EXT``: a str
as ``.txt`` (UTF-8), bytes as ``.bin`` (or named after the field alone when the field's name
is a media extension: a field ``jpg`` is the member ``KEY.jpg``), an array as ``.npy``
(`np.save`, no pickle), anything else (int, float, bool, None, lists, dicts) as ``.json``.
A member whose name would be ``KEY.F.F`` is ``KEY.F`` (a str field ``txt``: ``KEY.txt``).
None in a str, bytes or array field is no member (it reads back as None given the schema),
except when the whole record is None: then its first field is written as ``.json`` null, so
that every record has a member. Member headers are fixed (mtime 0, mode 0644, uid/gid 0).

jsonl: one line per record, ``{"__key__": KEY, FIELD: VALUE, ...}`` in schema order.

pickle: the whole file is one pickled list of ``{"__key__": KEY, FIELD: VALUE, ...}``,
protocol 4, without memo (the bytes depend on the values only, not on which objects were
shared). Loading a pickle runs code named in it: load only the files of jobs you trust.

parquet: see `datamill.io.records.parquet`.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import tarfile
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Iterator

import numpy as np

from datamill.atomic import discard, rename_noreplace, temp_path_for
from datamill.io.shards import _HEADER_TEMPLATE, _tar_header

from .parquet import ParquetEncoder, read_parquet, schema_of
from .schema import KEY_FIELD, Schema, json_text, values_size

FORMATS = ("parquet", "webdataset", "jsonl", "pickle")
SUFFIX = {"parquet": ".parquet", "webdataset": ".tar", "jsonl": ".jsonl", "pickle": ".pkl"}
MEDIA_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff", "wav",
                              "flac", "mp3", "ogg", "mp4", "webm"})
_KEY_RE = re.compile(r"[^./\\\x00\s]+")


@dataclass(frozen=True)
class FileInfo:
    """A completed record file: its number of records, size in bytes and SHA-256 (hex)."""

    records: int
    bytes: int
    sha256: str


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown record format {fmt!r}; expected one of {', '.join(FORMATS)}")


# ---------------------------------------------------------------------------------------
# webdataset
# ---------------------------------------------------------------------------------------

_ARRAY_KINDS = ("list", "array", "ragged")
_MEMBERLESS_NONE = ("str", "bytes", *_ARRAY_KINDS)  # None in these kinds: no member


def member_suffix(name: str, kind: str) -> str:
    """What follows ``KEY.`` in the tar member of field `name` of kind `kind`."""
    if kind == "str":
        ext = "txt"
    elif kind == "bytes":
        ext = name if name.lower() in MEDIA_EXTENSIONS else "bin"
    elif kind in _ARRAY_KINDS:
        ext = "npy"
    else:
        ext = "json"
    return name if ext == name else f"{name}.{ext}"


# `_tar_header`'s bytes for short ASCII names, its checksum summed from what changes only
_TEMPLATE_SUM = sum(_HEADER_TEMPLATE) - sum(_HEADER_TEMPLATE[124:136])


def _member_header(name: str, size: int) -> bytes:
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) > 100 or not raw.isascii() or size >= 8 ** 11:
        return _tar_header(name, size)
    size_field = b"%011o\0" % size
    header = bytearray(_HEADER_TEMPLATE)
    header[0:len(raw)] = raw
    header[124:136] = size_field
    header[148:155] = b"%06o\0" % (_TEMPLATE_SUM + sum(raw) + sum(size_field))
    return bytes(header)


_NPY_HEADERS: dict[tuple[np.dtype, tuple[int, ...]], bytes] = {}


def _npy(array: np.ndarray) -> bytes:
    """`np.save`'s bytes of `array`: its header (depending on dtype and shape only, cached)
    and its data in C order."""
    array = np.ascontiguousarray(array)
    key = (array.dtype, array.shape)
    header = _NPY_HEADERS.get(key)
    if header is None:
        buf = io.BytesIO()
        np.lib.format.write_array(buf, array, allow_pickle=False)
        npy = buf.getvalue()
        if len(_NPY_HEADERS) >= 4096:
            _NPY_HEADERS.clear()
        _NPY_HEADERS[key] = npy[:len(npy) - array.nbytes]
        return npy
    return header + array.tobytes()


class TarEncoder:
    def __init__(self, file: BinaryIO, schema: Schema):
        self._file = file
        self._fields = [(name, spec["kind"], member_suffix(name, spec["kind"]))
                        for name, spec in schema.fields.items()]

    def add(self, key: str, values: list[Any], size: int) -> None:
        members = []
        for (name, kind, suffix), value in zip(self._fields, values):
            if value is None:
                if kind in _MEMBERLESS_NONE:
                    continue
                payload = b"null"
            elif kind == "str":
                payload = value.encode("utf-8")
            elif kind == "bytes":
                payload = value
            elif kind in _ARRAY_KINDS:
                payload = _npy(value)
            else:
                payload = json_text(value).encode("utf-8")
            members.append((f"{key}.{suffix}", payload))
        if not members:
            members.append((f"{key}.{self._fields[0][0]}.json", b"null"))
        write = self._file.write
        for member, payload in members:
            write(_member_header(member, len(payload)))
            write(payload)
            write(bytes(-len(payload) % tarfile.BLOCKSIZE))

    def copy_from(self, path: str, start: int, end: int) -> int:
        """Append records [start, end) of tar `path` (written by this encoder with a schema
        ours covers): a record whose members are those `add` would write for it is copied
        as it is (the same bytes), any other is decoded and added."""
        names = {name for name, _, _ in self._fields}
        count = 0
        with open(path, "rb") as f:
            records = groupby(_tar_members(f, raw=True),
                              key=lambda member: member[0].partition(".")[0])
            for n, (key, group) in enumerate(records):
                if n >= end:
                    break
                if n < start:
                    continue
                members = [(name.partition(".")[2], data, raw) for name, data, raw in group]
                suffixes = [suffix for suffix, _, _ in members]
                present = set(suffixes)
                expected = [suffix for _, kind, suffix in self._fields
                            if suffix in present or kind not in _MEMBERLESS_NONE]
                if not expected and members[0][1] == b"null":
                    expected = [f"{self._fields[0][0]}.json"]
                if suffixes == expected:
                    for _, _, raw in members:
                        self._file.write(raw)
                else:
                    record = dict(_decode_member(suffix, data) for suffix, data, _ in members)
                    extra = record.keys() - names
                    if extra:
                        raise ValueError(f"{path}: record {key!r} has fields {sorted(extra)} "
                                         "that are not in the schema")
                    self.add(key, [record.get(name) for name, _, _ in self._fields], 0)
                count += 1
        return count

    def finish(self) -> None:
        # As tarfile ends an archive: two zero blocks, then zeros up to a whole record.
        end = self._file.tell() + 2 * tarfile.BLOCKSIZE
        self._file.write(bytes(2 * tarfile.BLOCKSIZE + (-end) % tarfile.RECORDSIZE))

    def discard(self) -> None:
        pass


def _decode_member(suffix: str, data: bytes) -> tuple[str, Any]:
    name, _, ext = suffix.partition(".")
    ext = ext or name
    if ext == "txt":
        return name, data.decode("utf-8")
    if ext == "json":
        return name, json.loads(data)
    if ext == "npy":
        return name, np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
    return name, data


def _octal(field: bytes) -> int:
    if field[0] & 0x80:  # base-256 (sizes of 8 GiB and more)
        return tarfile.nti(field)
    return int(field.strip(b"\0 ") or b"0", 8)


def _tar_members(f: BinaryIO, raw: bool = False) -> Iterator[tuple[Any, ...]]:
    """(name, data) of the regular files of a tar that `TarEncoder` wrote: plain ustar
    headers, and PAX headers for long names (read directly: tarfile costs ~30 us a member).
    With `raw`: (name, data, the member's bytes in the tar, its PAX header's included)."""
    long_name = None
    pieces: list[bytes] = []
    while True:
        header = f.read(tarfile.BLOCKSIZE)
        if len(header) < tarfile.BLOCKSIZE or header == bytes(tarfile.BLOCKSIZE):
            return
        # the checksum sums the header with its own field counted as 8 spaces
        if _octal(header[148:156]) != sum(header) - sum(header[148:156]) + 256:
            raise ValueError(f"{getattr(f, 'name', 'tar')}: bad tar header checksum")
        size = _octal(header[124:136])
        data = f.read(size)
        pad = f.read(-size % tarfile.BLOCKSIZE)
        if raw:
            pieces += (header, data, pad)
        kind = header[156:157]
        if kind == tarfile.XHDTYPE:
            for line in data.decode("utf-8", "surrogateescape").splitlines():
                key, _, value = line.partition(" ")[2].partition("=")
                if key == "path":
                    long_name = value
            continue
        if kind in (tarfile.REGTYPE, tarfile.AREGTYPE):
            name = long_name
            if name is None:
                name = header[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                prefix = header[345:500].split(b"\0", 1)[0]
                if prefix and header[257:262] == b"ustar":
                    name = prefix.decode("utf-8", "surrogateescape") + "/" + name
            if raw:
                yield name, data, b"".join(pieces)
            else:
                yield name, data
        pieces = []
        long_name = None


def read_tar(path: str, start: int, end: int | None) -> Iterator[tuple[str, dict[str, Any]]]:
    with open(path, "rb") as f:
        records = groupby(_tar_members(f), key=lambda member: member[0].partition(".")[0])
        for n, (key, members) in enumerate(records):
            if end is not None and n >= end:
                return
            if n >= start:
                yield key, dict(_decode_member(name.partition(".")[2], data)
                                for name, data in members)


# ---------------------------------------------------------------------------------------
# jsonl and pickle
# ---------------------------------------------------------------------------------------


class JsonlEncoder:
    def __init__(self, file: BinaryIO, schema: Schema):
        self._file = file
        self._names = list(schema.fields)

    def add(self, key: str, values: list[Any], size: int) -> None:
        row = {KEY_FIELD: key, **dict(zip(self._names, values))}
        self._file.write(json_text(row).encode("utf-8") + b"\n")

    def finish(self) -> None:
        pass

    def discard(self) -> None:
        pass


def read_jsonl(path: str, start: int, end: int | None) -> Iterator[tuple[str, dict[str, Any]]]:
    with open(path, "rb") as f:
        for n, line in enumerate(f):
            if end is not None and n >= end:
                return
            if n >= start:
                row = json.loads(line)
                yield row.pop(KEY_FIELD), row


class PickleEncoder:
    """Keeps the file's records until `finish` pickles them as one list."""

    def __init__(self, file: BinaryIO, schema: Schema):
        self._file = file
        self._names = list(schema.fields)
        self._rows: list[dict[str, Any]] = []

    def add(self, key: str, values: list[Any], size: int) -> None:
        self._rows.append({KEY_FIELD: key, **dict(zip(self._names, values))})

    def finish(self) -> None:
        pickler = pickle.Pickler(self._file, protocol=4)
        pickler.fast = True  # no memo: shared objects are written as often as they appear
        pickler.dump(self._rows)
        self._rows = []

    def discard(self) -> None:
        self._rows = []


def read_pickle(path: str, start: int, end: int | None) -> Iterator[tuple[str, dict[str, Any]]]:
    with open(path, "rb") as f:
        rows = pickle.load(f)
    for row in rows[start:end]:
        row = dict(row)
        yield row.pop(KEY_FIELD), row


_ENCODERS = {"parquet": ParquetEncoder, "webdataset": TarEncoder, "jsonl": JsonlEncoder,
             "pickle": PickleEncoder}
_READERS = {"parquet": read_parquet, "webdataset": read_tar, "jsonl": read_jsonl,
            "pickle": read_pickle}


# ---------------------------------------------------------------------------------------
# The interface
# ---------------------------------------------------------------------------------------


class RecordWriter:
    """Writes one record file (a part or a shard) of format `fmt`, record by record, under a
    temporary name; `close` renames it to `final_path` (never replacing a file there) and
    returns its `FileInfo`, `abort` removes it. As a context manager it closes when the block
    ends normally (the result is then in `info`) and aborts when it raises.

    Records must be conformed to `schema` (`Schema.conform`); keys must be unique and free
    of '.', '/', '\\\\', NUL and whitespace (`safe_key` makes such keys). The same records
    with the same schema always give the same bytes.

    >>> with RecordWriter("parquet", "out/part-0.parquet", schema) as w:   # doctest: +SKIP
    ...     w.add(safe_key("clip.mp4", 0), schema.conform(record, "parquet"))
    >>> w.info                                                             # doctest: +SKIP
    FileInfo(records=1, bytes=1834, sha256='9f86d0...')
    """

    def __init__(self, fmt: str, final_path: str | os.PathLike[str], schema: Schema):
        _check_format(fmt)
        self.fmt = fmt
        self.path = Path(final_path)
        self.schema = schema
        self.records = 0
        self.info: FileInfo | None = None
        self._done = False
        self._names = list(schema.fields)
        self._names_size = sum(map(len, self._names))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = temp_path_for(self.path)
        self._file = open(self._tmp, "wb")
        try:
            self._encoder = _ENCODERS[fmt](self._file, schema)
        except BaseException:
            self.abort()
            raise

    def add(self, key: str, record: dict[str, Any]) -> int:
        """Write one conformed record; return its `encoded_size`."""
        if self._done:
            raise RuntimeError(f"record file {self.path} is already closed or aborted")
        if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
            raise ValueError(f"bad record key {key!r}: non-empty, without '.', '/', '\\\\', "
                             "NUL or whitespace (see safe_key)")
        values = list(map(record.get, self._names))
        size = self._names_size + values_size(values)
        self._encoder.add(key, values, size)
        self.records += 1
        return size

    def close(self) -> FileInfo:
        if self.info is not None:
            return self.info
        if self._done:
            raise RuntimeError(f"record file {self.path} was aborted")
        try:
            self._encoder.finish()
            self._file.close()
            info = FileInfo(self.records, *_size_and_sha256(self._tmp))
            rename_noreplace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._done = True
        self.info = info
        return info

    def abort(self) -> None:
        """Remove the temporary file; does nothing after `close`."""
        if self.info is not None:
            return
        self._done = True
        self._encoder_discard()
        discard(self._file, self._tmp)

    def _encoder_discard(self) -> None:
        encoder = getattr(self, "_encoder", None)
        if encoder is not None:
            encoder.discard()

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _size_and_sha256(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def read_records(fmt: str, path: str | os.PathLike[str], start: int = 0, end: int | None = None,
                 schema: Schema | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """(key, record) for records [start, end) of a file written by `RecordWriter`, decoded
    to Python values (arrays with their dtype and shape). Given `schema` (one that covers the
    file's), every record has its fields in that order, a missing one as None."""
    _check_format(fmt)
    path = os.fspath(path)
    if fmt == "parquet" and schema is not None:
        import pyarrow.parquet as pq
        written = schema_of(pq.read_schema(path))
        if not schema.covers(written):
            raise ValueError(f"{path} was written with a schema {written.to_json()} that "
                             f"{schema.to_json()} does not cover")
    records = _READERS[fmt](path, start, end)
    if schema is None:
        return records
    return _with_fields(records, schema, path)


def _with_fields(records: Iterator[tuple[str, dict[str, Any]]], schema: Schema,
                 path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for key, record in records:
        extra = record.keys() - schema.fields.keys()
        if extra:
            raise ValueError(f"{path}: record {key!r} has fields {sorted(extra)} that are not "
                             "in the schema")
        yield key, {name: record.get(name) for name in schema.fields}


def write_shard(fmt: str, final_path: str | os.PathLike[str], schema: Schema,
                slices: list[tuple[str, int, int]]) -> FileInfo:
    """Write the records [start, end) of each (part path, start, end) of `slices`, in order,
    as one file: the same bytes as `RecordWriter` writing those records with `schema`. The
    parts are files `RecordWriter` wrote with `schema` or one it covers (their missing fields
    become None). Streaming: it holds one parquet row group or one record (pickle: the whole
    shard)."""
    with RecordWriter(fmt, final_path, schema) as writer:
        for part, start, end in slices:
            n = writer.records
            copy_from = getattr(writer._encoder, "copy_from", None)
            copied = None if copy_from is None else copy_from(os.fspath(part), start, end)
            if copied is not None:
                writer.records += copied
            else:
                for key, record in read_records(fmt, part, start, end, schema):
                    writer.add(key, record)
            if writer.records - n != end - start:
                raise ValueError(f"{part} has {start + writer.records - n} records, fewer "
                                 f"than the {end} asked for")
    assert writer.info is not None
    return writer.info


def read_shards(dst: str | os.PathLike[str],
                shards: list[int | str] | None = None) -> Iterator[dict[str, Any]]:
    """Every record of the dataset at `dst` (its ``index.json`` lists the shards in order),
    as a dict of ``__key__`` and the record's fields; `shards` selects some shards by
    position in the index or by name (so data-loader workers can split them).

    >>> for record in read_shards("out", shards=[0, 3]):   # doctest: +SKIP
    ...     record["__key__"], record["emb"].shape
    """
    dst = Path(dst)
    with open(dst / "index.json", encoding="utf-8") as f:
        index = json.load(f)
    fmt = index["format"]
    schema = Schema.from_json(index["schema"]) if "schema" in index else None
    entries = index["shards"]
    if shards is None:
        chosen = entries
    else:
        by_name = {entry["name"]: entry for entry in entries}
        chosen = []
        for s in shards:
            if isinstance(s, str):
                if s not in by_name:
                    raise ValueError(f"no shard named {s!r} in {dst / 'index.json'}")
                chosen.append(by_name[s])
            else:
                chosen.append(entries[s])
    for entry in chosen:
        for key, record in read_records(fmt, dst / entry["name"], schema=schema):
            yield {KEY_FIELD: key, **record}
