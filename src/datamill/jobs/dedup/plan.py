"""The dedup job's grouping: the hashed images of a ledger as arrays, their groups (near copies
through the multi-index search, union-find) and the image each group keeps."""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...engine.ledger import decode_records
from ...engine.task import OK
from ...media.hash_index import near_groups
from ...media.hashes import hamming, to_hex

# The ledger rows that hold a hash: the images that take part in grouping.
PLACE = "place"  # the stage of an image whose copy, link or move failed (its hash is kept)
_HASHED = ("WHERE status='ok' OR (status='filtered' AND reason IN ('duplicate', "
           f"'duplicate_of_reference')) OR (status='failed' AND stage='{PLACE}')")


RECORD_KEYS = {"hash", "sha256", "width", "height", "bytes"}  # what `Collection.record` holds


@dataclass
class Collection:
    """Hashed images of a ledger, as arrays (one row per image, in key order), and where each
    file is now: `where` is its path in SRC, or where dedup moved it (then also `moved_to`)."""

    keys: list[str]
    sources: list[str]
    hashes: np.ndarray
    sha256: list[str]
    width: np.ndarray
    height: np.ndarray
    size: np.ndarray
    mtime: np.ndarray
    where: list[str]
    moved_to: list[str | None]
    # whose ledger row is already ok with the hash record alone (`record`): nothing to rewrite
    # when the image stays unique
    plain: np.ndarray

    @classmethod
    def load(cls, ledger: Any) -> "Collection":
        keys, sources, hashes, sha, w, h, b, mt = [], [], [], [], [], [], [], []
        plain = []
        rows = ledger.iter_rows(("key", "source", "mtime", "records", "status", "stage", "reason",
                                 "error_type", "message", "traceback"), _HASHED)
        while chunk := list(itertools.islice(rows, 5000)):
            for (key, source, mtime, _, status, *said), records in zip(
                    chunk, decode_records([r[3] for r in chunk])):
                rec = records[0]
                hashes.append(int(rec["hash"], 16))
                plain.append(status == OK and not any(said) and len(records) == 1
                             and rec.keys() == RECORD_KEYS and rec["hash"] == to_hex(hashes[-1]))
                keys.append(key)
                sources.append(source)
                sha.append(rec["sha256"])
                w.append(rec["width"])
                h.append(rec["height"])
                b.append(rec["bytes"])
                mt.append(mtime or 0.0)
        return cls(keys, sources, np.array(hashes, dtype=np.uint64), sha, np.array(w, np.int64),
                   np.array(h, np.int64), np.array(b, np.int64), np.array(mt, np.float64),
                   list(sources), [None] * len(keys), np.array(plain, bool))

    def __len__(self) -> int:
        return len(self.keys)

    def locate(self, moved: dict[str, str]) -> np.ndarray:
        """Find each image now (in SRC, else where a done move of `moved` put it); returns
        the mask of the images that are still somewhere."""
        present = np.zeros(len(self), bool)
        for i, source in enumerate(self.sources):
            if os.path.exists(source):
                present[i] = True
            elif (dest := moved.get(source)) is not None and os.path.exists(dest):
                self.where[i] = self.moved_to[i] = dest
                present[i] = True
        return present

    def take(self, idx: np.ndarray) -> "Collection":
        def pick(values: list) -> list:
            return [values[i] for i in idx]
        return Collection(pick(self.keys), pick(self.sources), self.hashes[idx],
                           pick(self.sha256), self.width[idx], self.height[idx], self.size[idx],
                           self.mtime[idx], pick(self.where), pick(self.moved_to), self.plain[idx])

    def record(self, i: int) -> dict:
        """Image `i`'s hash record, as the worker returned it."""
        return {"hash": to_hex(int(self.hashes[i])), "sha256": self.sha256[i],
                "width": int(self.width[i]), "height": int(self.height[i]),
                "bytes": int(self.size[i])}


def group_images(c: Collection, threshold: int) -> np.ndarray:
    """Group id per image: near copies (Hamming <= threshold), streamed into union-find so
    that memory stays bounded even when millions of hashes cluster.  Exact copies (same
    sha256) have the same hash, so they are grouped too."""
    return near_groups(c.hashes, threshold)


def choose_kept(c: Collection, members: np.ndarray, policy: str) -> int:
    """The member a group keeps: largest (pixels, then bytes, then path order), first,
    oldest or newest (modification time, then path order)."""
    if policy == "largest":
        order = np.lexsort((members, -c.size[members], -(c.width[members] * c.height[members])))
    elif policy == "first":
        order = np.argsort(members, kind="stable")
    elif policy == "oldest":
        order = np.lexsort((members, c.mtime[members]))
    else:
        order = np.lexsort((members, -c.mtime[members]))
    return int(members[order[0]])


@dataclass
class Plan:
    """The groups of the images present now and what each image is."""

    groups: np.ndarray  # group id per image
    sizes: np.ndarray  # members per group id
    kept_of: np.ndarray  # the member its group keeps (itself when unique)
    distance: np.ndarray  # Hamming distance to that member
    reference: dict[int, tuple[str, int]]  # duplicates of --against: (reference file, distance)
    survives: np.ndarray  # kept or unique, and no duplicate of the reference

    def grouped(self) -> np.ndarray:
        """The images in groups of two or more, by group then position."""
        idx = np.flatnonzero(self.sizes[self.groups] > 1)
        return idx[np.lexsort((idx, self.groups[idx]))]


def plan_groups(c: Collection, threshold: int, policy: str,
                reference: dict[int, tuple[str, int]], groups: np.ndarray | None = None) -> Plan:
    """Group the images (unless `groups`, group_images' result, is given) and choose the one
    each group keeps, among the members that do not duplicate the reference (any member when
    all do: then nothing of the group survives)."""
    n = len(c)
    if groups is None:
        groups = group_images(c, threshold) if n else np.zeros(0, np.int64)
    sizes = np.bincount(groups, minlength=n) if n else np.zeros(0, np.int64)
    kept_of = np.arange(n)
    in_reference = np.zeros(n, bool)
    in_reference[list(reference)] = True
    order = np.argsort(groups, kind="stable")
    for members in np.split(order, np.flatnonzero(np.diff(groups[order])) + 1) if n else []:
        if len(members) > 1:
            free = members[~in_reference[members]]
            kept_of[members] = choose_kept(c, free if len(free) else members, policy)
    distance = hamming(c.hashes, c.hashes[kept_of]).astype(np.int64) if n else kept_of
    return Plan(groups, sizes, kept_of, distance, reference,
                 (kept_of == np.arange(n)) & ~in_reference)

