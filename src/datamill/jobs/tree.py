"""What jobs over a folder tree share: options with a fingerprint, a walk by extension, and
the walk's counts in the summary (clips over videos, dedup over images)."""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterator

from ..errors import UsageError
from ..engine.job import Item, Job
from ..io.sources import FileEntry, WalkStats, readable_path, walk_files

BAD_FILE_NAME = "bad_file_name"


class TreeJob(Job):
    """A job whose items are the files of SRC with some extensions.  Subclasses set `kind`
    (what the files are, for messages) and pass their options, which must be a dataclass
    with `validate()` and `fingerprint()`."""

    kind = "files"

    def __init__(self, src: str | os.PathLike, dst: str | os.PathLike, options: Any,
                 extensions: tuple[str, ...]):
        super().__init__(src, dst)
        self.opts = options
        self.extensions = extensions
        self.walk = WalkStats()

    def validate(self) -> None:
        self.opts.validate()
        super().validate()
        if not self.src.is_dir():
            raise UsageError(f"SRC must be a folder of {self.kind}: {self.src}")
        path = os.path.abspath(self.src)
        if readable_path(path) != path:  # else every file would fail as bad_file_name
            raise UsageError(f"SRC's path is not valid UTF-8: {readable_path(path)}; rename it")

    def fingerprint(self) -> dict:
        return self.opts.fingerprint()

    def options(self) -> dict:
        return {**dataclasses.asdict(self.opts), "extensions": list(self.extensions)}

    def files(self) -> Iterator[FileEntry]:
        return walk_files(self.src, self.extensions, self.walk)

    def count(self) -> int:
        """The files the run will meet: the tree walked ahead (names only, no decoding)."""
        return sum(1 for _ in walk_files(self.src, self.extensions, WalkStats()))

    def item_for(self, entry: FileEntry, payload: Any, **kw: Any) -> Item:
        """The engine's item for a walked file: keyed by its path relative to SRC, with its
        size and mtime (a changed file is redone).  A file whose name is not valid UTF-8
        fails as `bad_file_name` without running, under its escaped path."""
        if entry.bad_name is not None:
            message = (f"the file name is not valid UTF-8: {entry.bad_name} (rename it to "
                       "process it)")
            return Item(entry.rel, payload, source=entry.bad_name, size=entry.size,
                        mtime=entry.mtime, error=(BAD_FILE_NAME, message), **kw)
        return Item(entry.rel, payload, source=entry.path, size=entry.size, mtime=entry.mtime,
                    **kw)

    def walk_lines(self) -> list[str]:
        """What the walk passed over, for the summary."""
        lines = []
        if self.walk.other_files:
            lines.append(f"{self.walk.other_files} other files ignored")
        if self.walk.error_count:
            path, reason = self.walk.errors[0]
            lines.append(f"walk: {self.walk.error_count} paths skipped (e.g. {path}: {reason})")
        return lines
