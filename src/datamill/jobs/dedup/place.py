"""Putting files where the dedup job decides: moving duplicates away (never replacing a file),
copying or linking survivors into DST."""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from ...atomic import atomic_path, rename_noreplace


def move_file(source: Path, dest: Path) -> None:
    """Move a file (a symlink as itself) to `dest`, whose folder exists, never replacing a file
    there (FileExistsError); across file systems it is copied under a temporary name, renamed
    into place, then the original removed."""
    try:
        rename_noreplace(source, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        with atomic_path(dest) as tmp:
            shutil.copy2(source, tmp, follow_symlinks=False)
        os.unlink(source)


def inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)



def place_survivor(action: str, source: str, dest: Path) -> bool:
    """Put a survivor at `dest` (free) by `action`; True when a hard link was impossible
    across file systems (EXDEV) and it was copied instead."""
    if action == "symlink":
        os.symlink(os.path.abspath(source), dest)
        return False
    if action == "hardlink":
        try:
            os.link(source, dest)
            return False
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
    with atomic_path(dest) as tmp:
        shutil.copy2(source, tmp)
    return action == "hardlink"


def is_placed(action: str, source: str, dest: Path) -> bool:
    """Whether `dest` is already `source` placed by `action` (a hard link across file systems
    is a copy)."""
    try:
        if action == "symlink":
            return dest.is_symlink() and os.readlink(dest) == os.path.abspath(source)
        if dest.is_symlink():
            return False
        a, b = dest.stat(), os.stat(source)
    except OSError:
        return False
    same_file = (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
    same_copy = not same_file and (a.st_size, a.st_mtime) == (b.st_size, b.st_mtime)
    if action == "hardlink":
        return same_file or (same_copy and a.st_dev != b.st_dev)
    return same_copy