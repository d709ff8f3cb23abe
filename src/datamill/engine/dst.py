"""Where a job's outputs go (DST): a local folder or an fsspec URL (s3://, gs://, ...).

Every output is complete before it appears under its final name.  In a local folder it is
written under a temporary name and renamed (`atomic_path`).  On an object store it is written
to a local temporary file and uploaded when complete: the store makes an object visible only
once its upload has finished, so a killed worker never leaves half an object under a final
name, and no temporary object is ever created.  Jobs write through one of three doors:

    dst = Dst("s3://bucket/clips")          # or Dst("out/") for a local folder
    with dst.atomic_path("stats.json") as tmp:      # one file
        tmp.write_text("{}")
    with dst.staged() as root:                      # a task's outputs, any tree of files
        write_clips(root / "a" / "a_0000.mp4")       # local: root is DST itself
    dst.upload_many([("/src/x.jpg", "x.jpg")])      # complete local files, as they are

A local DST goes through exactly the code it went through before (no copy, no extra
rename).  fsspec and the filesystem of the URL's protocol (s3fs, gcsfs, ...) are optional:
`pip install 'datamill[remote]'`.  Credentials and endpoints come from the usual places of
each filesystem (for S3: AWS_* variables, ~/.aws, AWS_ENDPOINT_URL for MinIO and the like),
on every machine that runs workers.

The ledger never goes to DST when DST is a URL: SQLite needs a local disk, so it lives in a
local state folder (`state_dir`, default under the user's cache directory, keyed by DST).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from ..atomic import atomic_path, remove_output, remove_temps
from ..errors import UsageError

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
INSTALL_HINT = "pip install 'datamill[remote]'"
LEDGER_FILE = "state.sqlite"  # in the state folder (`state_dir_for`)
STATE_FOLDER = "_datamill"  # the state folder of a local DST, inside it


def is_url(location: str | os.PathLike) -> bool:
    """True for an fsspec URL other than file:// (which is a local path)."""
    m = _URL.match(os.fspath(location)) if isinstance(location, str) else None
    return bool(m) and m.group(1).lower() != "file"


class Dst:
    """A job's output location.  `path` is the folder when local (else None); `url` is what
    the user gave, as a string (the folder's path when local)."""

    def __init__(self, location: str | os.PathLike | "Dst"):
        if isinstance(location, Dst):
            self.url, self.path = location.url, location.path
        elif is_url(location):
            self.url, self.path = str(location).rstrip("/"), None
        else:
            text = os.fspath(location)
            if isinstance(text, str) and text.lower().startswith("file://"):
                text = text[len("file://"):]
            self.path = Path(text)
            self.url = str(self.path)
        self._fs: Any = None
        self._root = ""
        self._fs_pid = -1

    # -- identity -------------------------------------------------------------------------
    @property
    def is_remote(self) -> bool:
        return self.path is None

    @property
    def location(self) -> Path | str:
        """The folder (a Path) when local, else the URL."""
        return self.path if self.path is not None else self.url

    def child(self, rel: str) -> str:
        """How to name `rel` under DST in messages (a path or a URL)."""
        return str(self.path / rel) if self.path is not None else f"{self.url}/{rel}"

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"Dst({self.url!r})"

    def __getstate__(self) -> dict:
        # A filesystem object holds connections and an event loop: each process makes its own.
        return {"url": self.url, "path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"] if state["path"] is not None else state["url"])

    # -- the remote filesystem ------------------------------------------------------------
    @property
    def fs(self) -> Any:
        """The fsspec filesystem of a URL DST, made once per process (workers are forked)."""
        if self.path is not None:
            raise TypeError(f"{self.url} is a local folder, not a URL")
        if self._fs is None or self._fs_pid != os.getpid():
            self._fs, self._root = filesystem(self.url)
            self._fs_pid = os.getpid()
        return self._fs

    def remote(self, rel: str = "") -> str:
        """The filesystem path of `rel` under a URL DST (no protocol)."""
        self.fs  # noqa: B018 - makes the filesystem and its root, once per process
        return f"{self._root}/{rel}" if rel else self._root

    def check_writable(self) -> None:
        """Refuse, as a usage error, a URL DST that cannot be reached or written."""
        probe = self.remote(f".datamill-write-test-{os.getpid()}")
        try:
            self.fs.pipe_file(probe, b"")
            self.fs.rm_file(probe)
        except Exception as exc:  # noqa: BLE001 - any store error means the same to the user
            raise UsageError(f"DST is not writable: {self.url} ({type(exc).__name__}: {exc})") from exc

    # -- writing --------------------------------------------------------------------------
    @contextlib.contextmanager
    def atomic_path(self, rel: str, replace: bool = True) -> Iterator[Path]:
        """Yield a local path to write `rel` to; it appears under DST only when the block ends
        without error (renamed into place, or uploaded).  It replaces an earlier version
        (reports are rewritten every run; the engine checked at start that they are its own)
        unless `replace` is False."""
        if self.path is not None:
            with atomic_path(self.path / rel, replace) as tmp:
                yield tmp
            return
        with tempfile.TemporaryDirectory(prefix="datamill-") as folder:
            tmp = Path(folder) / posixpath.basename(rel)  # keeps the suffix writers look at
            yield tmp
            self.upload_many([(tmp, rel)])

    def write_bytes(self, rel: str, data: bytes) -> None:
        with self.atomic_path(rel) as tmp:
            tmp.write_bytes(data)

    @contextlib.contextmanager
    def staged(self, last: Callable[[str], bool] | None = None) -> Iterator[Path]:
        """Yield a local folder that stands for DST while a task writes its outputs there
        (each file atomically): DST itself when local; else a temporary folder whose files are
        uploaded when the block ends without error, then removed.  Files for which `last`
        is true are uploaded after all the others (a record is complete once its metadata
        file exists)."""
        if self.path is not None:
            yield self.path
            return
        with tempfile.TemporaryDirectory(prefix="datamill-") as folder:
            root = Path(folder)
            yield root
            files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
            late = [f for f in files if last is not None and last(f)]
            early = [f for f in files if last is None or not last(f)]
            for wave in (early, late):
                self.upload_many([(root / f, f) for f in wave])

    def upload_many(self, files: Iterable[tuple[str | os.PathLike, str]]) -> None:
        """Upload complete local files to `rel` paths under a URL DST, concurrently where the
        filesystem can."""
        pairs = [(os.fspath(local), self.remote(rel)) for local, rel in files]
        if pairs:
            self.fs.put([p[0] for p in pairs], [p[1] for p in pairs])

    # -- reading and cleaning ---------------------------------------------------------------
    def names(self) -> list[str]:
        """The names of DST's top-level files and folders; none when DST does not exist."""
        if self.path is not None:
            try:
                return os.listdir(self.path)
            except FileNotFoundError:
                return []
        try:  # fresh: workers have uploaded since this process last looked
            found = self.fs.ls(self.remote(), detail=False, refresh=True)
        except FileNotFoundError:
            return []
        return [posixpath.basename(name.rstrip("/")) for name in found]

    def files(self) -> set[str]:
        """Every file under a URL DST, relative to it (one listing of the whole prefix)."""
        root = self.remote()
        self.fs.invalidate_cache(root)
        try:
            found = self.fs.find(root)
        except FileNotFoundError:
            return set()
        return {posixpath.relpath(f, root) for f in found}

    def exists(self, rel: str) -> bool:
        if self.path is not None:
            return os.path.lexists(self.path / rel)
        return bool(self.fs.exists(self.remote(rel)))

    def remove_temps(self, rel: str) -> None:
        """Remove the temporary files of unfinished writes to `rel` (none on an object store,
        where nothing appears before its upload is complete)."""
        if self.path is not None:
            remove_temps(self.path / rel)

    def remove_output(self, rel: str) -> bool:
        """Remove an output datamill wrote (a file or a folder) and the temporary files of
        unfinished writes to it; True if anything was there.  Only the engine calls this, and
        only for paths its ledger lists."""
        if self.path is not None:
            return remove_output(self.path / rel)
        target = self.remote(rel)
        try:
            self.fs.rm(target, recursive=True)
            return True
        except FileNotFoundError:
            return False


def filesystem(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path without protocol) of `url`; a usage error saying what to
    install when fsspec or the protocol's filesystem is missing."""
    try:
        import fsspec
    except ImportError as exc:
        raise UsageError(f"DST {url} is a URL: writing to it needs fsspec ({INSTALL_HINT}, "
                         "plus gcsfs, adlfs, ... for other stores than S3)") from exc
    try:
        fs, root = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise UsageError(f"DST {url}: {exc} ({INSTALL_HINT} installs s3fs for s3://)") from exc
    return fs, root.rstrip("/")


def default_state_dir(dst: Dst) -> Path:
    """Where the ledger of a URL DST lives unless told: $XDG_CACHE_HOME (or ~/.cache)/
    datamill/<the URL, made a file name>-<hash of the URL>."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", dst.url).strip("-")[:80]
    digest = hashlib.sha256(dst.url.encode("utf-8")).hexdigest()[:12]
    return Path(cache) / "datamill" / f"{readable}-{digest}"


def state_dir_for(dst: Dst, state_dir: str | os.PathLike | None = None) -> Path:
    """The folder of a job's ledger, the one place that decides it: `state_dir` when given,
    DST/_datamill for a local DST, else `default_state_dir`."""
    if state_dir is not None:
        return Path(state_dir).expanduser()
    if dst.path is not None:
        return dst.path / STATE_FOLDER
    return default_state_dir(dst)


def state_path(dst: str | os.PathLike | Dst, state_dir: str | os.PathLike | None = None) -> Path:
    """The ledger file of the job in `dst`: ``state.sqlite`` in `state_dir_for`'s folder."""
    return state_dir_for(Dst(dst), state_dir) / LEDGER_FILE
