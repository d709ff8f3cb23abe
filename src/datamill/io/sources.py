"""Item sources: walk a folder tree for files, read URL/record lists row by row.

Pure functions, no processes, no global state. Both sources are lazy: a tree of millions
of files or a list of millions of lines is consumed in (near) constant memory.
"""
from __future__ import annotations

import csv
import errno
import gzip
import io
import json
import logging
import os
import stat
import zlib
from dataclasses import dataclass, field
from typing import IO, Any, Iterable, Iterator

__all__ = [
    "FileEntry",
    "WalkStats",
    "readable_path",
    "walk_files",
    "Row",
    "read_rows",
    "sniff_format",
    "count_rows",
    "SourceError",
    "LIST_FORMATS",
    "MAX_RECORDED_ERRORS",
]

log = logging.getLogger("datamill")

# The temporary names of unfinished writes (datamill.atomic.TMP_MARK): skipped.  Not imported:
# this module imports only the standard library (a test loads it alone, as another user).
_TMP_MARK = ".datamill-tmp-"


MAX_RECORDED_ERRORS = 1000

LIST_FORMATS = ("txt", "csv", "tsv", "jsonl", "parquet")
_EXT_TO_FORMAT = {
    ".txt": "txt",
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".json": "jsonl",  # read as JSON lines: one object per line
    ".parquet": "parquet",
}

_DirKey = tuple[int, int]

# ---------------------------------------------------------------------------------------
# Folder walk
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileEntry:
    """One file found by `walk_files`.

    A name that is not valid UTF-8 (b"\\xff.mp4") is kept openable in `path` (Python's
    surrogate escapes), but such a string cannot be written to a ledger, a manifest or a
    terminal: `bad_name` then holds the path readably escaped ("/src/\\xff.mp4") and
    `rel` is escaped the same way, so the file can still be recorded, as failed, by name.
    """

    path: str  # absolute path as walked (symlinks not resolved); opens the file
    rel: str  # POSIX path relative to the walk root, as walked (escaped, see above)
    size: int
    mtime: float
    bad_name: str | None = None  # `path` escaped, when it is not valid UTF-8; else None


def readable_path(path: str) -> str:
    """`path` itself when it is valid UTF-8, else with its undecodable bytes escaped
    (b"/src/\\xff.mp4" -> "/src/\\\\xff.mp4"), fit for a message, a ledger or a manifest."""
    if path.isascii():
        return path
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(path).decode("utf-8", "backslashreplace")
    return path


@dataclass
class WalkStats:
    """Counters filled in by `walk_files` while it runs.

    `errors` keeps the first MAX_RECORDED_ERRORS (path, reason) pairs; `error_count`
    counts all of them.
    """

    matched: int = 0
    other_files: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)
    error_count: int = 0

    def add_error(self, path: str, reason: str) -> None:
        """Record one problem (the list is capped, the count is not)."""
        self.error_count += 1
        if len(self.errors) < MAX_RECORDED_ERRORS:
            self.errors.append((path, reason))


@dataclass
class _Frame:
    """A directory being listed during the depth-first walk."""

    key: _DirKey
    path: str
    rel: str
    entries: list[os.DirEntry[str]]
    pos: int = 0
    current: str = ""  # name of the entry being processed in this directory


def _normalise_extensions(extensions: Iterable[str] | str | None) -> tuple[str, ...] | None:
    if extensions is None:
        return None
    if isinstance(extensions, str):
        extensions = (extensions,)
    out = []
    for ext in extensions:
        ext = ext.strip().lower().lstrip(".")
        if not ext:
            raise ValueError("empty file extension in extensions")
        out.append("." + ext)
    return tuple(out)


def _matches(name: str, exts: tuple[str, ...] | None) -> bool:
    return exts is None or name.lower().endswith(exts)


def _reason(exc: OSError) -> str:
    if isinstance(exc, PermissionError):
        return "permission denied"
    if exc.errno == errno.ELOOP:
        return "symlink loop"
    return exc.strerror or type(exc).__name__


def _list_dir(path: str) -> list[os.DirEntry[str]]:
    with os.scandir(path) as it:
        return sorted(it, key=lambda e: e.name)


def walk_files(
    root: str | os.PathLike[str],
    extensions: Iterable[str] | str | None = None,
    stats: WalkStats | None = None,
) -> Iterator[FileEntry]:
    """Yield the regular files under `root`, lazily, depth first, in a deterministic order.

    Order: the entries of each directory (files and sub-directories together) are sorted
    by name (code-point order); a sub-directory is walked completely where it sorts.
    `extensions` ("mp4", ".AVI", ...) match case-insensitively; None means all files.
    Symlinks to files and directories are followed; a directory (by device and inode) is
    walked at most once, and a file reached again through a symlink is yielded once (the
    first time it is reached). Hard links to one file are distinct paths and all yielded.
    Symlink loops, repeats, broken symlinks and unreadable directories are recorded in
    `stats.errors` and skipped. Names containing ".datamill-tmp-" are skipped silently.

    Raises FileNotFoundError / NotADirectoryError / PermissionError (at call time) if
    `root` is missing, not a directory, or cannot be listed.
    """
    exts = _normalise_extensions(extensions)
    root_path = os.path.abspath(os.fspath(root))
    try:
        st = os.stat(root_path)
    except FileNotFoundError:
        raise FileNotFoundError(
            errno.ENOENT, f"folder to walk does not exist: {root_path}", root_path
        ) from None
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(
            errno.ENOTDIR, f"not a folder, cannot walk it: {root_path}", root_path
        )
    try:
        entries = _list_dir(root_path)
    except PermissionError:
        raise PermissionError(
            errno.EACCES, f"cannot list folder to walk: {root_path}", root_path
        ) from None
    top = _Frame((st.st_dev, st.st_ino), root_path, "", entries)
    return _walk(top, exts, stats if stats is not None else WalkStats())


def _walk(top: _Frame, exts: tuple[str, ...] | None, stats: WalkStats) -> Iterator[FileEntry]:
    visited: set[_DirKey] = {top.key}  # every directory listed so far
    on_stack: dict[_DirKey, _Frame] = {top.key: top}  # the current directory and its ancestors
    linked: set[_DirKey] = set()  # (dev, ino) of files yielded through a file symlink
    stack = [top]

    def report(path: str, reason: str, level: int = logging.WARNING) -> None:
        path = readable_path(path)
        stats.add_error(path, reason)
        log.log(level, "skipping %s: %s", path, reason)

    def already_yielded(path: str) -> bool:
        """Was the real file behind the symlink `path` already yielded, directly?"""
        real = os.path.realpath(path)
        parent, name = os.path.split(real)
        if _TMP_MARK in name or not _matches(name, exts):
            return False  # the real file is never yielded under its own name
        try:
            pst = os.stat(parent)
        except OSError:
            return False
        key = (pst.st_dev, pst.st_ino)
        if key not in visited:
            return False  # its folder has not been listed (yet, or ever)
        frame = on_stack.get(key)
        if frame is None:
            return True  # its folder has been walked completely
        return name < frame.current  # its folder is being walked: is it behind us?

    while stack:
        frame = stack[-1]
        if frame.pos >= len(frame.entries):
            stack.pop()
            del on_stack[frame.key]
            continue
        entry = frame.entries[frame.pos]
        frame.entries[frame.pos] = None  # type: ignore[call-overload]  # free as we go
        frame.pos += 1
        frame.current = name = entry.name
        if _TMP_MARK in name:
            continue
        path = os.path.join(frame.path, name)
        rel = f"{frame.rel}/{name}" if frame.rel else name
        try:
            is_link = entry.is_symlink()
            st = entry.stat()  # follows symlinks
        except FileNotFoundError:
            if os.path.islink(path):
                report(path, "broken symlink")
            continue  # otherwise it vanished while we walked: nothing to report
        except OSError as exc:
            report(path, _reason(exc))
            continue

        if stat.S_ISDIR(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if key in on_stack:
                report(path, "symlink loop")
                continue
            if key in visited:
                report(path, "already visited through a symlink", logging.INFO)
                continue
            try:
                entries = _list_dir(path)
            except OSError as exc:
                report(path, _reason(exc))
                continue
            visited.add(key)
            child = _Frame(key, path, rel, entries)
            on_stack[key] = child
            stack.append(child)
            continue

        if not stat.S_ISREG(st.st_mode):
            continue  # sockets, fifos, devices: not files to process
        if not _matches(name, exts):
            stats.other_files += 1
            continue
        key = (st.st_dev, st.st_ino)
        if is_link:
            if key in linked or already_yielded(path):
                report(path, "already visited through a symlink", logging.INFO)
                continue
            linked.add(key)
        elif key in linked:
            report(path, "already visited through a symlink", logging.INFO)
            continue
        stats.matched += 1
        shown = readable_path(path)
        if shown == path:
            yield FileEntry(path=path, rel=rel, size=st.st_size, mtime=st.st_mtime)
        else:
            yield FileEntry(path=path, rel=readable_path(rel), size=st.st_size,
                            mtime=st.st_mtime, bad_name=shown)


# ---------------------------------------------------------------------------------------
# List readers
# ---------------------------------------------------------------------------------------


class SourceError(Exception):
    """A list file that cannot be read (to its end): truncated or corrupt compression, not
    the format its name says, unreadable.  The message names the file, the cause and how far
    reading got: "urls.txt.gz: the compressed file ends early (truncated) after row 950"."""


@dataclass(frozen=True)
class Row:
    """One data row of a list file; exactly one of `fields` / `error` is set.

    `index` is 0-based and counts data rows in file order: non-blank lines for txt and
    jsonl, records after the header for csv/tsv (blank lines not counted), rows for parquet.
    """

    index: int
    fields: dict[str, Any] | None
    error: str | None = None


def sniff_format(path: str | os.PathLike[str]) -> str:
    """The list format of `path` from its extension ('txt', 'csv', 'tsv', 'jsonl', 'parquet').

    A trailing ".gz" is ignored; ".json" means JSON lines. Raises ValueError if unknown.
    """
    name = os.path.basename(os.fspath(path)).lower()
    if name.endswith(".gz"):
        name = name[:-3]
    fmt = _EXT_TO_FORMAT.get(os.path.splitext(name)[1])
    if fmt is None:
        supported = ", ".join(sorted(_EXT_TO_FORMAT))
        raise ValueError(
            f"cannot tell the list format of {os.fspath(path)!r}: supported extensions are "
            f"{supported} (each optionally followed by .gz); or pass the format explicitly"
        )
    return fmt


_GZIP_MAGIC = b"\x1f\x8b"
_PARQUET_MAGIC = b"PAR1"


def count_rows(path: str | os.PathLike[str], fmt: str | None = None) -> int:
    """About how many rows `read_rows` will yield, cheaply: a parquet file's metadata, else
    its lines (decompressed, not parsed; a csv's header not counted, blank lines counted)."""
    p = os.fspath(path)
    fmt = fmt or sniff_format(p)
    gz = _is_gzip(p)
    if fmt == "parquet" and not gz:
        import pyarrow.parquet as pq
        return pq.ParquetFile(p).metadata.num_rows
    lines = last = 0
    with (gzip.open(p, "rb") if gz else open(p, "rb")) as f:
        while block := f.read(1 << 20):
            lines += block.count(b"\n")
            last = block[-1]
    lines += last not in (0, 10)  # a last line without its newline
    return max(0, lines - (fmt in ("csv", "tsv")))


def _is_gzip(path: str) -> bool:
    """Whether `path` is gzip-compressed (by its first bytes); a non-empty file named .gz
    that is not is refused."""
    with open(path, "rb") as f:
        head = f.read(2)
    if path.lower().endswith(".gz") and head and head != _GZIP_MAGIC:
        raise SourceError(f"{path}: not gzip-compressed, though its name ends in .gz")
    return head == _GZIP_MAGIC


def _check_parquet(path: str) -> None:
    """Refuse at once a (not compressed) .parquet list that is not parquet: a parquet file
    starts and ends with its magic bytes (a truncated one has lost its end)."""
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(0, os.SEEK_END)
        if f.tell() >= 12:  # magic, footer length, magic
            f.seek(-4, os.SEEK_END)
            if head == f.read(4) == _PARQUET_MAGIC:
                return
    raise SourceError(f"{path}: not a parquet file (no parquet magic bytes at its start and "
                      "end: another format, or truncated)")


def read_rows(
    path: str | os.PathLike[str], fmt: str | None = None, text_column: str = "url"
) -> Iterator[Row]:
    """Yield the rows of a list file lazily, in constant memory.

    Format from the extension (see `sniff_format`) unless `fmt` is given; gzip is detected
    by its magic bytes (a file named .gz without them is refused). txt lines become
    {text_column: line}. Unparseable lines become Row(index, None, "line N: reason") and
    reading goes on.
    Invalid UTF-8 is replaced (U+FFFD). Raises ValueError for an unknown format and
    FileNotFoundError for a missing file, at call time; SourceError for a file that cannot
    be read as what it claims to be: at call time when its first (or, for parquet, last)
    bytes show it, else when reading reaches the damage (a truncated .gz).
    """
    p = os.fspath(path)
    if fmt is None:
        fmt = sniff_format(p)
    elif fmt not in LIST_FORMATS:
        raise ValueError(f"unknown list format {fmt!r} for {p!r}: supported are {', '.join(LIST_FORMATS)}")
    gz = _is_gzip(p)  # also raises FileNotFoundError now rather than on first next()
    if fmt == "parquet":
        if not gz:
            _check_parquet(p)
        rows = _read_parquet(p, gz)
    elif fmt == "txt":
        rows = _read_txt(p, gz, text_column)
    elif fmt == "jsonl":
        rows = _read_jsonl(p, gz)
    else:
        rows = _read_delimited(p, gz, "\t" if fmt == "tsv" else ",")
    return _named_errors(p, rows)


def _named_errors(path: str, rows: Iterator[Row]) -> Iterator[Row]:
    """`rows`, with a failure to read the file turned into a SourceError naming it."""
    count = 0
    try:
        for row in rows:
            yield row
            count += 1
    except Exception as exc:
        cause = _read_failure(exc)
        if cause is None:
            raise
        where = f"after row {count}" if count else "before its first row"
        raise SourceError(f"{path}: {cause} {where}") from exc


def _read_failure(exc: Exception) -> str | None:
    """What went wrong, said for a user, when `exc` is a failure to read the file (None for
    any other exception: a bug is not dressed up as a damaged file)."""
    if isinstance(exc, EOFError):
        return "the compressed file ends early (truncated)"
    if isinstance(exc, gzip.BadGzipFile):
        return f"damaged gzip data ({exc})"
    if isinstance(exc, zlib.error):
        return f"damaged compressed data ({exc})"
    from pyarrow.lib import ArrowException  # only once reading failed

    if isinstance(exc, ArrowException):
        return f"not a readable parquet file ({exc})"
    if isinstance(exc, OSError):
        return f"cannot read it ({exc.strerror or exc})"
    return None


def _open_text(path: str, gz: bool, newline: str | None) -> IO[str]:
    raw: IO[bytes] = gzip.open(path, "rb") if gz else open(path, "rb")  # type: ignore[assignment]
    return io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace", newline=newline)


def _read_txt(path: str, gz: bool, text_column: str) -> Iterator[Row]:
    with _open_text(path, gz, None) as f:
        index = 0
        for line in f:
            line = line.strip()
            if line:
                yield Row(index, {text_column: line})
                index += 1


def _read_jsonl(path: str, gz: bool) -> Iterator[Row]:
    with _open_text(path, gz, None) as f:
        index = 0
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:
                yield Row(index, None, f"line {lineno}: invalid JSON: {exc}")
            else:
                if isinstance(obj, dict):
                    yield Row(index, obj)
                else:
                    kind = type(obj).__name__
                    yield Row(index, None, f"line {lineno}: expected a JSON object, got {kind}")
            index += 1


def _read_delimited(path: str, gz: bool, delimiter: str) -> Iterator[Row]:
    with _open_text(path, gz, "") as f:
        reader = csv.reader(f, delimiter=delimiter)
        header: list[str] | None = None
        index = 0
        while True:
            before = reader.line_num
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                if header is None:
                    raise SourceError(f"{path}: cannot read the header: {exc}") from exc
                yield Row(index, None, f"line {reader.line_num}: {exc}")
                index += 1
                if reader.line_num == before:
                    return  # no progress: stop rather than loop
                continue
            if not record:
                continue  # blank line
            if header is None:
                header = record
                continue
            if len(record) != len(header):
                yield Row(
                    index,
                    None,
                    f"line {reader.line_num}: expected {len(header)} fields, got {len(record)}",
                )
            else:
                yield Row(index, dict(zip(header, record)))
            index += 1


def _read_parquet(path: str, gz: bool) -> Iterator[Row]:
    import pyarrow.parquet as pq  # imported here: walking files needs no pyarrow

    with (gzip.open(path, "rb") if gz else open(path, "rb")) as raw:
        index = 0
        for batch in pq.ParquetFile(raw).iter_batches(batch_size=10_000):
            for record in batch.to_pylist():
                yield Row(index, record)
                index += 1


def list_format_option(what: str = "Input format") -> Any:
    """The option choosing a list file's format, as the jobs that read lists declare it."""
    from ..options import option
    return option(None, f"{what} (default: from the file name; .gz is read as such).",
                  choices=LIST_FORMATS, fingerprint=False)
