"""The shared-memory transport: large arrays between processes of one machine without
pickling them through a pipe.

`Ring` (ring.py) is a ring of fixed-size slots with backpressure or drop-oldest, read-only
zero-copy NumPy views for the consumer, and commit-ordered delivery; `segments.py` creates
its segments in /dev/shm, checks the room there first, and removes them after any ending of
their owner, by way of a registry of owners (pid and start time); `semaphore.py` holds the
process-shared semaphores that live in a ring's segment.
"""
from .ring import ReadSlot, Ring, RingHandle, Slot, die_with_owner
from .segments import RingError, remove_orphans

__all__ = ["ReadSlot", "Ring", "RingError", "RingHandle", "Slot", "die_with_owner",
           "remove_orphans"]
