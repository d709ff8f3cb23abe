"""Write outputs under a temporary name and rename them into place when complete.

A rename into place never replaces a file that is already there (`rename_noreplace`): a
path taken by a file datamill did not write fails the item as `dst_exists`, and the file is
left alone.  Files datamill rewrites on purpose (its reports) pass `replace=True`.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
from pathlib import Path
from typing import Any, Iterator

TMP_MARK = ".datamill-tmp-"
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_libc = None


def _renameat2():
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        except OSError:
            _libc = False
    return getattr(_libc, "renameat2", None) if _libc else None


def rename_noreplace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Rename `src` to `dst`; FileExistsError if `dst` exists (atomically where the system
    has renameat2, else by a check just before the rename)."""
    fn = _renameat2()
    if fn is not None:
        if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise FileExistsError(err, f"{dst} exists and was not written by datamill; it is "
                                  "left alone", str(dst))
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), str(src))
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, f"{dst} exists and was not written by datamill; it "
                              "is left alone", str(dst))
    os.rename(src, dst)


def temp_path_for(final: str | os.PathLike) -> Path:
    """A hidden sibling of `final` that keeps its suffix (encoders pick formats by suffix)."""
    final = Path(final)
    return final.with_name(f".{final.stem}{TMP_MARK}{os.getpid()}{final.suffix}")


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is renamed to `final` (which must not
    exist unless `replace`), else removed.

    >>> with atomic_path("out/clip_0000.mp4") as tmp:   # doctest: +SKIP
    ...     encode_to(tmp)
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(final)
    try:
        yield tmp
        if replace:
            os.replace(tmp, final)
        else:
            rename_noreplace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(final: str | os.PathLike, data: bytes, replace: bool = False) -> None:
    with atomic_path(final, replace) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def write_text_atomic(final: str | os.PathLike, text: str, replace: bool = False) -> None:
    write_bytes_atomic(final, text.encode("utf-8"), replace)


def remove_output(final: str | os.PathLike) -> bool:
    """Remove an output datamill wrote (a file or a folder) and the temporary files of
    writes to it that never completed (`.STEM.datamill-tmp-PID.SUFFIX` beside it).  Returns
    True if anything was removed."""
    import shutil
    final = Path(final)
    removed = False
    if final.is_dir() and not final.is_symlink():
        shutil.rmtree(final, ignore_errors=True)
        removed = True
    else:
        with contextlib.suppress(FileNotFoundError):
            final.unlink()
            removed = True
    return remove_temps(final) or removed


def remove_temps(final: str | os.PathLike) -> bool:
    """Remove the temporary files of writes to `final` that never completed (their writer
    was killed); True if there were any."""
    import shutil
    final = Path(final)
    removed = False
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        prefix, suffix = f".{final.stem}{TMP_MARK}", final.suffix
        for entry in os.scandir(final.parent):
            if entry.name.startswith(prefix) and entry.name.endswith(suffix):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)
                removed = True
    return removed


def discard(file: Any, tmp: str | os.PathLike) -> None:
    """Close `file` (an error closing it does not matter any more) and remove its temporary
    path `tmp`: what a writer does when its output is abandoned."""
    try:
        file.close()
    except OSError:
        pass
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
