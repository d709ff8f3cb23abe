"""Damaged files of any kind, for tests and ``datamill demo``: noise under a media name, and a
cut-off copy of a real file (as an interrupted download or copy leaves)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def make_corrupt_file(path: str | os.PathLike, size: int = 4096, seed: int = 0) -> Path:
    """`size` bytes of deterministic noise: not a media file whatever its name says."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
    return path


def make_truncated(path_src: str | os.PathLike, path_dst: str | os.PathLike, fraction: float) -> Path:
    """Copy the first `fraction` (0..1) of `path_src`'s bytes to `path_dst`, like a cut download."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], not {fraction}")
    data = Path(path_src).read_bytes()
    path_dst = Path(path_dst)
    path_dst.parent.mkdir(parents=True, exist_ok=True)
    path_dst.write_bytes(data[: int(len(data) * fraction)])
    return path_dst
