"""Output shards: write records (key, image, metadata, caption) as files, tar or parquet.

A worker writes one shard per task. A record is a key (stable, e.g. the zero-padded input
row number "000000123"), an optional payload (image bytes and their extension), a metadata
dict (JSON-serialisable) and an optional caption. Three formats, one interface:

=============  =======================  ==================================================
format         shard                    one record
=============  =======================  ==================================================
files          folder ``root/00012/``   ``KEY.EXT`` (payload), ``KEY.txt`` (caption, if
                                        any), ``KEY.json`` (metadata, always, written last)
webdataset     ``root/00012.tar``       the same three members, in that order
parquet        ``root/00012.parquet``   one row: key, image (Hugging Face ``Image``: bytes
                                        and path), ext, caption, meta (the full metadata
                                        as JSON) and typed copies of chosen fields
=============  =======================  ==================================================

Atomicity: every file is written under a hidden temporary name (``.NAME.datamill-tmp-PID.SUF``)
and renamed into place when complete. A tar or parquet shard appears under its final name
only on `ShardWriter.close`; a files shard appears record by record, each file complete,
and a record is complete once its ``.json`` exists (`iter_shard` skips records without it).
Writers are streaming: between records a writer keeps only the keys (to refuse duplicates);
a parquet shard also buffers at most one row group (`ParquetShardWriter`).

Pure: no processes, no global state. Paths are local paths.

>>> with open_shard_writer("webdataset", "out", 12) as w:           # doctest: +SKIP
...     w.add("000000123", jpeg_bytes, "jpg", {"url": url, "width": 256}, caption="a cat")
'000000123.jpg'
>>> w.info                                                            # doctest: +SKIP
ShardInfo(shard_id=12, path='out/00012.tar', count=1, bytes=10240)
"""
from __future__ import annotations

import abc
import json
import operator
import os
import re
import tarfile
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Iterator, Literal, Mapping, NamedTuple, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from datamill.atomic import discard, rename_noreplace, temp_path_for, write_bytes_atomic

__all__ = [
    "ShardFormat",
    "SHARD_FORMATS",
    "ShardInfo",
    "ShardRecord",
    "ShardWriter",
    "FilesShardWriter",
    "WebDatasetShardWriter",
    "ParquetShardWriter",
    "DEFAULT_PARQUET_FIELDS",
    "open_shard_writer",
    "next_shard_id",
    "shard_name",
    "iter_shard",
    "completes_record",
]

ShardFormat = Literal["files", "webdataset", "parquet"]
SHARD_FORMATS: tuple[str, ...] = ("files", "webdataset", "parquet")

# A key becomes a file or member name and webdataset groups members by the part of the
# name before its first dot, so keys carry no dot and no path separator.
_KEY_RE = re.compile(r"[^./\\\x00]+")
_EXT_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_META_EXT = "json"
_CAPTION_EXT = "txt"
_SHARD_ID_RE = re.compile(r"(\d+)")

_Writer = TypeVar("_Writer", bound="ShardWriter")


@dataclass(frozen=True)
class ShardInfo:
    """A completed shard: its id, final path, number of records and size on disk in bytes."""

    shard_id: int
    path: str
    count: int
    bytes: int


class ShardRecord(NamedTuple):
    """One record read back by `iter_shard` (the arguments given to `ShardWriter.add`)."""

    key: str
    data: bytes | None
    ext: str | None
    meta: dict[str, Any]
    caption: str | None


class ShardWriter(abc.ABC):
    """Writes the records of one shard; `close` makes it visible, `abort` discards it.

    Use it as a context manager: the shard is closed when the block ends normally and
    aborted when it raises. After `close` the result is also in `info`.

    Keys must be unique within a shard, non-empty, without ".", "/", "\\\\" or NUL.
    A record whose arguments are invalid (bad key or extension, metadata that is not
    JSON-serialisable, a duplicate key) is refused with ValueError/TypeError before anything
    is written, and the writer stays usable. If writing itself fails (disk full, ...), the
    writer only accepts `abort` (and `close`, which then aborts and raises).
    """

    format: ClassVar[str]
    suffix: ClassVar[str]  # of the shard's final name: "" (a folder), ".tar", ".parquet"

    def __init__(self, root: str | os.PathLike[str], shard_id: int) -> None:
        shard_id = operator.index(shard_id)
        if shard_id < 0:
            raise ValueError(f"shard_id must be an int >= 0, got {shard_id!r}")
        self.root = Path(root)
        self.shard_id = shard_id
        self.path = self.root / f"{shard_id:05d}{self.suffix}"
        self.count = 0
        self.info: ShardInfo | None = None
        self._keys: set[str] = set()
        self._failed = False
        self._aborted = False

    # -- public interface ---------------------------------------------------------------

    def add(
        self,
        key: str,
        data: bytes | None,
        ext: str | None,
        meta: Mapping[str, Any],
        caption: str | None = None,
    ) -> str | None:
        """Write one record; return where its payload is, or None when `data` is None.

        The returned name is, per format: files, the path relative to `root`
        ("00012/000000123.jpg"); webdataset, the tar member ("000000123.jpg"); parquet, the
        row's key ("000000123"). `ext` ("jpg", ".jpg") is required with `data` and ignored
        without it; "json" and "txt" are reserved for the metadata and caption.
        """
        self._check_writable()
        if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
            raise ValueError(f"bad shard key {key!r}: non-empty, no '.', '/', '\\\\' or NUL")
        if key in self._keys:
            raise ValueError(f"duplicate key {key!r} in shard {self.path}")
        if data is None:
            ext = None
        else:
            if not isinstance(data, bytes):
                data = bytes(data)
            ext = _check_ext(ext)
        if caption is not None and not isinstance(caption, str):
            raise TypeError(f"caption must be a str or None, got {type(caption).__name__}")
        if not isinstance(meta, Mapping):
            raise TypeError(f"meta must be a mapping, got {type(meta).__name__}")
        meta_json = json.dumps(meta, ensure_ascii=False)  # TypeError if not serialisable
        self._check_record(meta)
        try:
            name = self._write(key, data, ext, meta, meta_json, caption)
        except BaseException:
            self._failed = True
            raise
        self._keys.add(key)
        self.count += 1
        return name

    def close(self) -> ShardInfo:
        """Complete the shard, make it visible under its final name, return its `ShardInfo`.

        Calling it again returns the same `ShardInfo`. If completing fails, the shard is
        aborted and the error raised.
        """
        if self.info is not None:
            return self.info
        if self._aborted:
            raise RuntimeError(f"shard {self.path} was aborted")
        if self._failed:
            self.abort()
            raise RuntimeError(f"a write to shard {self.path} failed; it has been aborted")
        try:
            size = self._finish()
        except BaseException:
            self.abort()
            raise
        self.info = ShardInfo(self.shard_id, str(self.path), self.count, size)
        return self.info

    def abort(self) -> None:
        """Discard the shard: remove its temporary file, or the files a files shard wrote.

        Does nothing after a successful `close` or a previous `abort`.
        """
        if self.info is not None or self._aborted:
            return
        self._aborted = True
        self._discard()

    def __enter__(self: _Writer) -> _Writer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # -- what a format implements -------------------------------------------------------

    def _check_record(self, meta: Mapping[str, Any]) -> None:
        """Refuse a record this format cannot store (before anything is written)."""

    @abc.abstractmethod
    def _write(self, key: str, data: bytes | None, ext: str | None, meta: Mapping[str, Any],
               meta_json: str, caption: str | None) -> str | None:
        """Write one validated record; return its payload's name (see `add`)."""

    @abc.abstractmethod
    def _finish(self) -> int:
        """Complete the shard under its final name; return its size in bytes."""

    @abc.abstractmethod
    def _discard(self) -> None:
        """Remove everything this writer wrote; never raise for what is already gone."""

    def _check_writable(self) -> None:
        if self.info is not None or self._aborted:
            raise RuntimeError(f"shard {self.path} is already closed or aborted")
        if self._failed:
            raise RuntimeError(f"a write to shard {self.path} failed; abort it")


def _check_ext(ext: str | None) -> str:
    if not isinstance(ext, str) or not _EXT_RE.fullmatch(ext.lstrip(".")):
        raise ValueError(f"bad extension {ext!r} for a record with data")
    ext = ext.lstrip(".")
    if ext.lower() in (_META_EXT, _CAPTION_EXT):
        raise ValueError(f"extension {ext!r} is reserved for the metadata and caption")
    return ext


def _members(
    key: str, data: bytes | None, ext: str | None, meta_json: str, caption: str | None
) -> list[tuple[str, bytes]]:
    """The (name, bytes) of one record, payload first and metadata last."""
    members = []
    if data is not None:
        members.append((f"{key}.{ext}", data))
    if caption is not None:
        members.append((f"{key}.{_CAPTION_EXT}", caption.encode("utf-8")))
    members.append((f"{key}.{_META_EXT}", meta_json.encode("utf-8")))
    return members


# ---------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------


class FilesShardWriter(ShardWriter):
    """A folder ``root/{shard_id:05d}/`` of ``KEY.EXT``, ``KEY.txt`` and ``KEY.json`` files.

    Each file is written atomically, so the folder may exist partially while the shard is
    written (and after a killed worker), but never holds a half-written file. `abort`
    removes the files this writer wrote, and the folder if that leaves it empty.
    """

    format = "files"
    suffix = ""

    def __init__(self, root: str | os.PathLike[str], shard_id: int) -> None:
        super().__init__(root, shard_id)
        self._written: list[Path] = []
        self._bytes = 0

    def _write(self, key: str, data: bytes | None, ext: str | None, meta: Mapping[str, Any],
               meta_json: str, caption: str | None) -> str | None:
        self.path.mkdir(parents=True, exist_ok=True)
        for name, payload in _members(key, data, ext, meta_json, caption):
            target = self.path / name
            write_bytes_atomic(target, payload)
            self._written.append(target)
            self._bytes += len(payload)
        return None if data is None else f"{self.path.name}/{key}.{ext}"

    def _finish(self) -> int:
        self.path.mkdir(parents=True, exist_ok=True)  # an empty shard is an empty folder
        return self._bytes

    def _discard(self) -> None:
        for target in self._written:
            try:
                target.unlink()
            except FileNotFoundError:
                pass
        try:
            self.path.rmdir()
        except OSError:  # missing, or holds files this writer did not write
            pass


# ---------------------------------------------------------------------------------------
# webdataset
# ---------------------------------------------------------------------------------------


class WebDatasetShardWriter(ShardWriter):
    """A tar file ``root/{shard_id:05d}.tar``, readable by the ``webdataset`` library.

    Members per record: ``KEY.EXT`` (payload), ``KEY.txt`` (caption), ``KEY.json``
    (metadata), in the order the records were added. Member headers are fixed (mtime 0,
    mode 0644, uid/gid 0, no owner names), so the same records give the same bytes. Each
    member is streamed to a temporary file, renamed to the final name by `close`.
    """

    format = "webdataset"
    suffix = ".tar"

    def __init__(self, root: str | os.PathLike[str], shard_id: int) -> None:
        super().__init__(root, shard_id)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = temp_path_for(self.path)
        self._file = open(self._tmp, "wb")

    def _write(self, key: str, data: bytes | None, ext: str | None, meta: Mapping[str, Any],
               meta_json: str, caption: str | None) -> str | None:
        write = self._file.write
        for name, payload in _members(key, data, ext, meta_json, caption):
            write(_tar_header(name, len(payload)))
            write(payload)
            if len(payload) % tarfile.BLOCKSIZE:
                write(bytes(tarfile.BLOCKSIZE - len(payload) % tarfile.BLOCKSIZE))
        return None if data is None else f"{key}.{ext}"

    def _finish(self) -> int:
        # As tarfile ends an archive: two zero blocks, then zeros up to a whole record.
        end = self._file.tell() + 2 * tarfile.BLOCKSIZE
        self._file.write(bytes(2 * tarfile.BLOCKSIZE + (-end) % tarfile.RECORDSIZE))
        self._file.close()
        rename_noreplace(self._tmp, self.path)
        return self.path.stat().st_size

    def _discard(self) -> None:
        discard(self._file, self._tmp)


def _tar_header(name: str, size: int) -> bytes:
    """The header `tarfile` writes for a regular file `name` of `size` bytes with the fixed
    fields above (mode 0644, mtime 0, uid/gid 0, no owner names): built directly for the
    usual short ASCII names (tarfile's TarInfo costs ~0.2 ms a member), through tarfile
    otherwise (long or non-ASCII names need PAX records)."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) > 100 or not raw.isascii() or size >= 8 ** 11:
        member = tarfile.TarInfo(name)
        member.size, member.mtime, member.mode = size, 0, 0o644
        member.uid = member.gid = 0
        member.uname = member.gname = ""
        return member.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    header = bytearray(_HEADER_TEMPLATE)
    header[0:len(raw)] = raw
    header[124:136] = b"%011o\0" % size
    header[148:155] = b"%06o\0" % sum(header)  # summed with the checksum field as spaces
    return bytes(header)


def _header_template() -> bytes:
    member = tarfile.TarInfo("")
    member.mtime, member.mode, member.uid, member.gid = 0, 0o644, 0, 0
    member.uname = member.gname = ""
    header = bytearray(member.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape"))
    header[124:136] = bytes(12)  # size: set per member
    header[148:156] = b" " * 8   # checksum: computed per member
    return bytes(header)


_HEADER_TEMPLATE = _header_template()


# ---------------------------------------------------------------------------------------
# parquet
# ---------------------------------------------------------------------------------------

# Metadata fields copied into typed columns by default (the download job's common fields).
DEFAULT_PARQUET_FIELDS: Mapping[str, pa.DataType] = {
    "url": pa.string(),
    "status": pa.string(),
    "width": pa.int64(),
    "height": pa.int64(),
    "sha256": pa.string(),
}

# The image column is what Hugging Face `datasets` stores its `Image` feature as: a struct of
# the encoded bytes and a file name (``KEY.EXT``), declared as that feature in the schema
# metadata, so that `datasets.load_dataset("parquet", ...)` decodes it to a PIL image.
_IMAGE_TYPE = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])
_IMAGE_BYTES = "image.bytes"  # the leaf column holding the payload
_HF_METADATA = {
    b"huggingface": json.dumps({"info": {"features": {"image": {"_type": "Image"}}}}).encode()
}

_PARQUET_BASE = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("image", _IMAGE_TYPE),
        pa.field("ext", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("meta", pa.string(), nullable=False),
    ]
)


class ParquetShardWriter(ShardWriter):
    """A parquet file ``root/{shard_id:05d}.parquet``, one row per record.

    Columns: ``key``, ``image`` (a struct of ``bytes`` and ``path`` = ``KEY.EXT``, null
    without data: the layout of Hugging Face's ``Image`` feature, declared as such in the
    schema metadata), ``ext``, ``caption``, ``meta`` (the whole metadata dict as a JSON
    string: lossless whatever the fields), then one typed
    column per entry of `fields` (default `DEFAULT_PARQUET_FIELDS`: url, status, width,
    height, sha256), holding a copy of that metadata value, null when absent. The schema
    is fixed up front, never inferred from the first rows, so every shard of a job has the
    same schema; a metadata value that does not fit its column's type is refused by `add`
    with TypeError.

    Rows are buffered and written as one row group every `rows_per_group` records or
    `max_group_bytes` of payload, whichever comes first, so memory stays bounded. The
    image column is stored uncompressed, without dictionary or statistics (images are
    already compressed); the others use `compression`.
    """

    format = "parquet"
    suffix = ".parquet"

    def __init__(
        self,
        root: str | os.PathLike[str],
        shard_id: int,
        *,
        fields: Mapping[str, pa.DataType] | None = None,
        rows_per_group: int = 256,
        max_group_bytes: int = 64 << 20,
        compression: str = "zstd",
    ) -> None:
        super().__init__(root, shard_id)
        self.fields = dict(DEFAULT_PARQUET_FIELDS if fields is None else fields)
        clash = set(self.fields) & set(_PARQUET_BASE.names)
        if clash:
            raise ValueError(f"fields {sorted(clash)} clash with the fixed parquet columns")
        if rows_per_group < 1 or max_group_bytes < 1:
            raise ValueError("rows_per_group and max_group_bytes must be >= 1")
        self.schema = pa.schema(
            list(_PARQUET_BASE) + [pa.field(name, t) for name, t in self.fields.items()],
            metadata=_HF_METADATA,
        )
        self.rows_per_group = rows_per_group
        self.max_group_bytes = max_group_bytes
        self._columns: dict[str, list[Any]] = {name: [] for name in self.schema.names}
        self._buffered_bytes = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = temp_path_for(self.path)
        leaves: list[str] = []  # the parquet columns: the image struct's are "image.bytes", ...
        for name in self.schema.names:
            leaves += [f"image.{f.name}" for f in _IMAGE_TYPE] if name == "image" else [name]
        others = [leaf for leaf in leaves if leaf != _IMAGE_BYTES]
        self._writer = pq.ParquetWriter(
            self._tmp,
            self.schema,
            compression={leaf: "none" if leaf == _IMAGE_BYTES else compression
                         for leaf in leaves},
            use_dictionary=others,
            write_statistics=others,
        )

    def _check_record(self, meta: Mapping[str, Any]) -> None:
        for name, type_ in self.fields.items():
            value = meta.get(name)
            if value is None:
                continue
            try:
                pa.scalar(value, type=type_)
            except (pa.ArrowException, TypeError, ValueError, OverflowError) as e:
                raise TypeError(
                    f"meta[{name!r}] = {value!r} does not fit parquet column type {type_}"
                ) from e

    def _write(self, key: str, data: bytes | None, ext: str | None, meta: Mapping[str, Any],
               meta_json: str, caption: str | None) -> str | None:
        row = {"key": key, "image": data, "ext": ext, "caption": caption, "meta": meta_json}
        for name in self.schema.names:
            self._columns[name].append(row[name] if name in row else meta.get(name))
        self._buffered_bytes += len(data or b"") + len(meta_json) + len(caption or "")
        if (
            len(self._columns["key"]) >= self.rows_per_group
            or self._buffered_bytes >= self.max_group_bytes
        ):
            self._flush()
        return None if data is None else key

    def _flush(self) -> None:
        rows = len(self._columns["key"])
        if rows:
            data = self._columns["image"]
            paths = [None if d is None else f"{k}.{e}"
                     for k, d, e in zip(self._columns["key"], data, self._columns["ext"])]
            image = pa.StructArray.from_arrays(
                [pa.array(data, pa.binary()), pa.array(paths, pa.string())],
                fields=list(_IMAGE_TYPE), mask=pa.array([d is None for d in data]))
            table = pa.Table.from_pydict({**self._columns, "image": image}, schema=self.schema)
            self._writer.write_table(table, row_group_size=rows)
        self._columns = {name: [] for name in self.schema.names}
        self._buffered_bytes = 0

    def _finish(self) -> int:
        self._flush()
        self._writer.close()
        rename_noreplace(self._tmp, self.path)
        return self.path.stat().st_size

    def _discard(self) -> None:
        self._columns = {name: [] for name in self.schema.names}
        try:
            self._writer.close()
        except (OSError, pa.ArrowException):
            pass
        try:
            os.unlink(self._tmp)
        except FileNotFoundError:
            pass


# ---------------------------------------------------------------------------------------
# Choosing, numbering and reading shards
# ---------------------------------------------------------------------------------------

_WRITERS: dict[str, type[ShardWriter]] = {
    cls.format: cls for cls in (FilesShardWriter, WebDatasetShardWriter, ParquetShardWriter)
}


def _writer_class(fmt: str) -> type[ShardWriter]:
    try:
        return _WRITERS[fmt]
    except KeyError:
        raise ValueError(
            f"unknown shard format {fmt!r}; expected one of {', '.join(SHARD_FORMATS)}"
        ) from None


def open_shard_writer(
    fmt: ShardFormat, root: str | os.PathLike[str], shard_id: int, **kw: Any
) -> ShardWriter:
    """A writer of shard `shard_id` of format `fmt` under `root`; `kw` go to its class."""
    return _writer_class(fmt)(root, shard_id, **kw)


def shard_name(fmt: ShardFormat, shard_id: int) -> str:
    """The final name of shard `shard_id` of format `fmt` ("00012", "00012.tar", ...)."""
    return f"{shard_id:05d}{_writer_class(fmt).suffix}"


def next_shard_id(root: str | os.PathLike[str], fmt: ShardFormat) -> int:
    """One more than the largest id of the `fmt` shards in `root`; 0 if there are none.

    Only final names count ("00012", "00012.tar", "00012.parquet"): temporary files and
    shards of the other formats are ignored. A missing `root` has no shards.
    """
    cls = _writer_class(fmt)
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return 0
    ids = []
    for entry in entries:
        if not entry.name.endswith(cls.suffix):
            continue
        match = _SHARD_ID_RE.fullmatch(entry.name[: len(entry.name) - len(cls.suffix)])
        if match and entry.is_dir() == (cls is FilesShardWriter):
            ids.append(int(match.group(1)))
    return max(ids) + 1 if ids else 0


def iter_shard(path: str | os.PathLike[str]) -> Iterator[ShardRecord]:
    """Yield the records of one shard (a folder, a ``.tar`` or a ``.parquet``), lazily.

    Records come in the order they were added (files shards: sorted by key). Records without
    metadata (in a files shard: cut short before their ``.json`` was written) and hidden
    temporary files are skipped.
    """
    path = Path(path)
    if path.is_dir():
        return _iter_files(path)
    if path.suffix == ".tar":
        return _iter_tar(path)
    if path.suffix == ".parquet":
        return _iter_parquet(path)
    raise ValueError(f"not a shard (a folder, .tar or .parquet): {path}")


def completes_record(name: str) -> bool:
    """Whether the file `name` (a path in a files shard) is a record's metadata, the file that
    makes the record complete: copies of a shard's files must put these last."""
    return name.endswith(f".{_META_EXT}")


def _split_name(name: str) -> tuple[str, str]:
    """("000000123", "jpg") from "000000123.jpg": the key ends at the first dot."""
    key, _, ext = name.partition(".")
    return key, ext


def _records(members: Iterator[tuple[str, bytes]]) -> Iterator[ShardRecord]:
    """Group consecutive (member name, bytes) pairs by key into records."""
    for key, group in groupby(members, key=lambda member: _split_name(member[0])[0]):
        parts = {_split_name(name)[1]: data for name, data in group}
        meta = parts.pop(_META_EXT, None)
        if meta is None:
            continue
        caption = parts.pop(_CAPTION_EXT, None)
        if len(parts) > 1:
            raise ValueError(f"record {key!r} has several payloads: {sorted(parts)}")
        ext, data = next(iter(parts.items())) if parts else (None, None)
        yield ShardRecord(
            key,
            data,
            ext,
            json.loads(meta),
            None if caption is None else caption.decode("utf-8"),
        )


def _iter_files(folder: Path) -> Iterator[ShardRecord]:
    names = sorted(
        (name for name in os.listdir(folder) if not name.startswith(".")),
        key=lambda name: (_split_name(name)[0], name),
    )
    return _records((name, (folder / name).read_bytes()) for name in names)


def _iter_tar(path: Path) -> Iterator[ShardRecord]:
    def members(tar: tarfile.TarFile) -> Iterator[tuple[str, bytes]]:
        for member in tar:
            fileobj = tar.extractfile(member) if member.isfile() else None
            if fileobj is not None:
                yield member.name, fileobj.read()

    with tarfile.open(path, "r|") as tar:
        yield from _records(members(tar))


def _iter_parquet(path: Path, batch_rows: int = 64) -> Iterator[ShardRecord]:
    columns = ["key", "image", "ext", "caption", "meta"]
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=columns):
        for row in batch.to_pylist():
            image = row["image"]
            if isinstance(image, dict):  # {"bytes", "path"}; plain bytes in older shards
                image = image["bytes"]
            yield ShardRecord(
                row["key"], image, row["ext"], json.loads(row["meta"]), row["caption"]
            )
