"""datamill: turn raw media collections into training-ready datasets on every core."""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .engine.errors import Filtered, ItemError, UsageError
from .engine.pmap import pmap
from .engine.scheduler import Result

try:
    __version__ = version("datamill")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = ["pmap", "clips", "download", "dedup", "Result", "RunOptions", "RunReport", "Filtered", "ItemError",
           "UsageError", "__version__"]


def __getattr__(name: str):
    # jobs and the run loop load PyAV, NumPy, PyArrow only when asked for
    if name in ("RunOptions", "RunReport"):
        from .engine import run
        return getattr(run, name)
    if name == "clips":
        from .jobs.clips import clips
        return clips
    if name == "dedup":
        from .jobs.dedup import dedup
        return dedup
    if name == "download":
        from .jobs.download import download
        return download
    raise AttributeError(f"module 'datamill' has no attribute {name!r}")
