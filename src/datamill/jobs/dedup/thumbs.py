"""The dedup report's thumbnails, made by the workers right after the hashing pass.

Groups are known only once every image is hashed, so the thumbnails are made then: when the
last hashing task has ended, the job groups the images and hands the engine side tasks of
`TASK_IMAGES` images each, run by the same worker processes (no new pool).  Only the images in
groups get one, and one per distinct file content (byte-identical copies share it).  A worker
reads the file, checks that it is still the content that was hashed (sha256), decodes it at
reduced scale (a JPEG at the smallest DCT scale covering the thumbnail, see
`media.image.load_thumbnail`) and returns the small JPEG (~3 KB at 160 pixels).

The driver keeps them in a spool beside the ledger (`_datamill/thumbs.sqlite`, keyed by
content and size), not in memory, so a million groups cost disk, not RAM; the report is
then written from the spool without the driver opening an image.  A rerun (another
threshold, or after a kill) makes only the thumbnails the spool lacks; images no longer in
any group are dropped from it after the report is written.
"""
from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from ...io.dedup_report import thumbnail_jpeg

SPOOL = "thumbs.sqlite"
THUMB_SIZE = 160  # the report's default thumb_size
TASK_IMAGES = 32  # thumbnails per side task (about 30 ms of work)

Thumb = tuple[bytes, int, int]  # JPEG bytes, width, height


@dataclass(frozen=True)
class ThumbTask:
    """A side task: the thumbnails of `images` ((path now, sha256 when hashed))."""

    size: int
    images: list[tuple[str, str]]


def make_thumbs(task: ThumbTask) -> list[tuple[str, Thumb | str]]:
    """Run in a worker: (sha256, thumbnail or the reason there is none) per image."""
    out: list[tuple[str, Thumb | str]] = []
    for path, sha in task.images:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            out.append((sha, f"cannot read: {exc.strerror or exc}"))
            continue
        if hashlib.sha256(data).hexdigest() != sha:
            out.append((sha, "the file changed since it was hashed: run again to rehash it"))
            continue
        out.append((sha, thumbnail_jpeg(data, task.size)))
    return out


def thumb_tasks(images: Iterable[tuple[str, str]], size: int) -> list[ThumbTask]:
    images = list(images)
    return [ThumbTask(size, images[i:i + TASK_IMAGES]) for i in range(0, len(images), TASK_IMAGES)]


class ThumbSpool:
    """Thumbnails by (sha256, size) in an SQLite file written by the driver only; the reasons
    some could not be made stay in memory for this run (the next run tries them again)."""

    def __init__(self, path: Path, size: int):
        self.size = size
        self.errors: dict[str, str] = {}
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # a cache: losing the last rows costs a redo
        self.db.execute("CREATE TABLE IF NOT EXISTS thumbs (sha256 TEXT, size INTEGER, jpeg BLOB, "
                        "width INTEGER, height INTEGER, PRIMARY KEY (sha256, size)) WITHOUT ROWID")

    def missing(self, shas: Iterable[str]) -> Iterator[str]:
        """The shas of `shas` with no thumbnail of this size."""
        shas = list(shas)
        for i in range(0, len(shas), 500):
            chunk = shas[i:i + 500]
            have = {r[0] for r in self.db.execute(
                f"SELECT sha256 FROM thumbs WHERE size=? AND sha256 IN ({','.join('?' * len(chunk))})",
                [self.size, *chunk])}
            yield from (s for s in chunk if s not in have)

    def put(self, made: list[tuple[str, Thumb | str]]) -> None:
        rows = [(sha, self.size, t[0], t[1], t[2]) for sha, t in made if not isinstance(t, str)]
        self.errors.update((sha, t) for sha, t in made if isinstance(t, str))
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT OR REPLACE INTO thumbs VALUES (?, ?, ?, ?, ?)", rows)

    def failed(self, shas: Iterable[str], why: str) -> None:
        self.errors.update((sha, why) for sha in shas)

    def get_many(self, shas: Iterable[str]) -> dict[str, Thumb | str]:
        """sha256 -> its thumbnail, or the reason there is none (one query per 500)."""
        shas = list(dict.fromkeys(shas))
        found: dict[str, Thumb | str] = {}
        for i in range(0, len(shas), 500):
            chunk = shas[i:i + 500]
            found.update((sha, (bytes(jpeg), width, height)) for sha, jpeg, width, height in self.db.execute(
                f"SELECT sha256, jpeg, width, height FROM thumbs WHERE size=? AND sha256 IN "
                f"({','.join('?' * len(chunk))})", [self.size, *chunk]))
        for sha in shas:
            if sha not in found:
                found[sha] = self.errors.get(sha, "no thumbnail was made (the run ended before)")
        return found

    def keep_only(self, shas: Iterable[str]) -> None:
        """Drop the thumbnails of images no longer in any group."""
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("CREATE TEMP TABLE IF NOT EXISTS keep (sha256 TEXT PRIMARY KEY)")
            self.db.execute("DELETE FROM keep")
            self.db.executemany("INSERT OR IGNORE INTO keep VALUES (?)", ((s,) for s in shas))
            self.db.execute("DELETE FROM thumbs WHERE sha256 NOT IN (SELECT sha256 FROM keep) "
                            "OR size != ?", (self.size,))

    def close(self) -> None:
        self.db.close()
