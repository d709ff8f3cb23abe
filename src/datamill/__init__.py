"""datamill: turn raw media collections into training-ready datasets on every core."""
TYPE_CHECKING = False  # as typing's, without importing typing

# Every public name is loaded when first asked for: `import datamill` runs no other module,
# so the command line starts its Ctrl-C handling (__main__.py) before the heavy imports, and
# the jobs load PyAV, NumPy and PyArrow only when used.
_PUBLIC = {
    "pmap": ".engine.pmap", "Result": ".engine.scheduler",
    "Filtered": ".errors", "ItemError": ".errors", "UsageError": ".errors",
    "RunOptions": ".engine.run", "RunReport": ".engine.run",
    "clips": ".jobs.clips", "dedup": ".jobs.dedup", "download": ".jobs.download",
    "map": ".jobs.map", "read_shards": ".io.records", "streams": ".jobs.streams", "write_streams": ".jobs.streams",
}

__all__ = ["pmap", "clips", "download", "dedup", "map", "read_shards", "streams", "write_streams", "Result", "RunOptions", "RunReport", "Filtered", "ItemError",
           "UsageError", "__version__"]

if TYPE_CHECKING:
    from typing import Any

    from .errors import Filtered, ItemError, UsageError
    from .engine.pmap import pmap
    from .engine.run import RunOptions, RunReport
    from .engine.scheduler import Result
    from .jobs.clips import clips
    from .jobs.dedup import dedup
    from .jobs.download import download
    from .jobs.map import map
    from .jobs.streams import streams, write_streams
    from .io.records import read_shards
    __version__: str


def __getattr__(name: str) -> "Any":
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version
        try:
            value = version("datamill")
        except PackageNotFoundError:  # pragma: no cover - running from a source tree
            value = "0.0.0"
    elif name in _PUBLIC:
        from importlib import import_module
        value = getattr(import_module(_PUBLIC[name], __name__), name)
    else:
        raise AttributeError(f"module 'datamill' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) - {"TYPE_CHECKING"} | set(__all__))
