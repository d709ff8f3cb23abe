"""Write outputs under a temporary name and rename them into place when complete."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

TMP_MARK = ".datamill-tmp-"


def temp_path_for(final: str | os.PathLike) -> Path:
    """A hidden sibling of `final` that keeps its suffix (encoders pick formats by suffix)."""
    final = Path(final)
    return final.with_name(f".{final.stem}{TMP_MARK}{os.getpid()}{final.suffix}")


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is renamed to `final`, else removed.

    >>> with atomic_path("out/clip_0000.mp4") as tmp:   # doctest: +SKIP
    ...     encode_to(tmp)
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(final)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(final: str | os.PathLike, data: bytes) -> None:
    with atomic_path(final) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def write_text_atomic(final: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(final, text.encode("utf-8"))
