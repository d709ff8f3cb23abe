"""Job `streams`: time-aligned frame batches from several videos or live sources, through
shared memory (stream.py: the consumer's iterator; decoder.py: one process per source)."""
from .stream import Batch, Stream, streams
from .write import StreamsJob, StreamsOptions, write_streams

__all__ = ["Batch", "Stream", "streams", "StreamsJob", "StreamsOptions", "write_streams"]
