"""Errors that carry an outcome: what a worker raises to say how an item ended.

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


class InputError(Exception):
    """Reading the job's input failed part-way (a truncated .gz, a file that is not the
    format it claims); the message names the file.  The job stops and reports what it did."""


class OutputTaken(Exception):
    """A path a task would write is already taken by a file datamill did not write."""

    def __init__(self, path: str):
        super().__init__(f"{path} exists and was not written by datamill; it is left alone")
        self.path = path
