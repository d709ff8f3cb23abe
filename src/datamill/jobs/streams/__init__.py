"""Job `streams`: time-aligned frame batches from several videos or live sources, through
shared memory (stream.py: the consumer's iterator; decoder.py: one process per source)."""
from .stream import Batch, Stream, streams

__all__ = ["Batch", "Stream", "streams"]
