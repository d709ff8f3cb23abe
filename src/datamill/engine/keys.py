"""Keys of items that are rows of a list, by what the row holds rather than where it is.

A row moved in the list keeps its key (it is skipped when done), a new row gets a new key, and
the n-th repetition of the same row is an item of its own (`KEY_n`).  Counting repetitions
needs every key seen so far: they go to a temporary on-disk SQLite table, not to memory, so a
list of ten million rows is keyed in constant memory.

>>> keys = ContentKeys()
>>> keys.keys_for([b"http://a/1.jpg", b"http://a/2.jpg", b"http://a/1.jpg"])
['4c0b19c1ad5bd1c2', '1a2a3b9c...', '4c0b19c1ad5bd1c2_1']              # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
import sqlite3
from collections import Counter


class ContentKeys:
    def __init__(self) -> None:
        self._db = sqlite3.connect("", isolation_level=None)  # a private temporary file
        self._db.execute("PRAGMA cache_size=-32768")
        self._db.execute("CREATE TABLE seen (digest INTEGER PRIMARY KEY, n INTEGER)")

    def keys_for(self, contents: list[bytes]) -> list[str]:
        digests = [int.from_bytes(hashlib.blake2b(c, digest_size=8).digest(), "big", signed=True)
                   for c in contents]
        marks = ",".join("?" * len(digests))
        before = dict(self._db.execute(f"SELECT digest, n FROM seen WHERE digest IN ({marks})",
                                       digests)) if digests else {}
        count: Counter[int] = Counter(before)
        keys = []
        for d in digests:
            n = count[d]
            keys.append(f"{d & 0xFFFFFFFFFFFFFFFF:016x}" + (f"_{n}" if n else ""))
            count[d] = n + 1
        self._db.execute("BEGIN")
        self._db.executemany("INSERT OR REPLACE INTO seen VALUES (?, ?)",
                             [(d, count[d]) for d in set(digests)])
        self._db.execute("COMMIT")
        return keys

    def close(self) -> None:
        self._db.close()
