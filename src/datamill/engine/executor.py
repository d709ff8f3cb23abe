"""Kept for `datamill.cli`, which imports `EXECUTORS` from here: the executors are the
package `engine/executors/`."""
from .executors import EXECUTORS, get_executor

__all__ = ["EXECUTORS", "get_executor"]
