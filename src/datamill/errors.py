"""Errors that carry an outcome: what a worker raises to say how an item ended, and what
stops a run.  Every exception class of datamill, in one tree:

    Exception
    ├── Filtered                  an item removed on purpose (too small, duplicate): not a failure
    ├── ItemError                 an item failed, with a short stable class (decode_error, ...)
    │   ├── ImageError            media/image.py: not_image, too_large, decode_error, ...
    │   ├── VideoError            media/video/errors.py: unreadable, no_video_stream, ...
    │   └── RecordError           io/records: a map record that cannot be stored (its field named)
    ├── UsageError                a bad request (missing SRC, a non-datamill DST): exit 2
    │   └── OptionError           options.py: a bad option value, naming its flag (also a ValueError)
    ├── SystemicFailure           the job cannot usefully go on (nearly all fail, disk full)
    ├── OutputTaken               a path a task would write is the user's
    ├── SourceError               io/sources.py: a list file that cannot be read to its end
    ├── TaskEncodingError         engine/executors/base.py: a payload that cannot be pickled
    ├── WorkerInitError           engine/executors/base.py: the per-worker initializer failed
    └── RingError                 engine/shm: no room in /dev/shm, a slot used after release

A worker's function raises `Filtered` to drop an item on purpose (not a failure) and an
`ItemError` (or a subclass) to fail it with a short, stable error class such as
``decode_error`` or ``http_404``.  Any other exception fails the item with its class name
as error class and is retried, since it may be transient.
"""
from __future__ import annotations


class Filtered(Exception):
    """The item was removed on purpose by an option the user set (too small, duplicate...)."""

    def __init__(self, reason: str, message: str = ""):
        super().__init__(message or reason)
        self.reason = reason


class ItemError(Exception):
    """A failure of one item with a stable error class; not retried unless `retryable`."""

    error_class = "error"
    retryable = False

    def __init__(self, message: str, error_class: str | None = None, retryable: bool | None = None):
        super().__init__(message)
        if error_class is not None:
            self.error_class = error_class
        if retryable is not None:
            self.retryable = retryable


class UsageError(Exception):
    """A mistake in how the job was asked for (missing SRC, bad option): exit status 2."""


class SystemicFailure(Exception):
    """The job cannot usefully go on (nearly everything fails, disk full, SRC gone)."""


class OutputTaken(Exception):
    """A path a task would write is already taken by a file datamill did not write."""

    def __init__(self, path: str):
        super().__init__(f"{path} exists and was not written by datamill; it is left alone")
        self.path = path
