"""The receive side's memory budget: what a mux may hold of what its streams sent.

The kernel's KCM never holds a partial message itself: the bytes stay in the
TCP receive queue, bounded by ``SO_RCVBUF`` per connection and by the
system's TCP memory limits across them.  A mux assembles messages in Python
memory, so it bounds them itself, across all its streams:

* *used* is the bytes of partly assembled messages (every stream's
  assembler) plus the complete messages not yet taken by the application
  (waiting on their stream, in the hold queue, in sockets' queues);
* a read in progress *reserves* the bytes it may return, so that reads
  started together cannot overshoot the limit together.

Below the limit a reader reads up to ``READ_SIZE`` bytes, no more than the
room left (and at least ``SMALL``).  At the limit:

1. if complete messages hold half of it or more, the application is behind:
   every reader stops (backpressure, as a full socket buffer does) until
   *used* is back below the low mark (7/8 of the limit);
2. otherwise partial messages fill it.  A stream in the middle of a message
   of which it holds ``SMALL`` bytes or more is *held*: it stops reading
   until *used* is below the low mark -- unless its message, by the length
   its header announced, could not fit even if every other partial message
   stayed where it is: then it fails alone, ``ENOBUFS``;
3. a stream at a message boundary, or holding less than ``SMALL`` bytes,
   reads at most ``SMALL`` bytes: small messages keep flowing past the held
   ones.

So memory stays below the limit plus ``2 * SMALL`` bytes per stream (plus
each assembler's own overhead), whatever the peers send.
"""

from __future__ import annotations

from typing import final

import trio_util

__all__ = ["SMALL", "Budget"]

#: The read size under pressure, and the partial message below which a stream
#: is never held.
SMALL = 4096


@final
class Budget:
    """The bytes held of received data, against ``limit``; see the module doc."""

    __slots__ = (
        "failures",
        "freed",
        "holds",
        "limit",
        "low",
        "partial",
        "queued",
        "reserved",
        "waiting",
    )

    def __init__(self, limit: int) -> None:
        if limit < 2 * SMALL:
            raise ValueError(f"receive_memory_limit must be >= {2 * SMALL}")
        self.limit = limit
        #: Held readers go on once *used* is below this.
        self.low = limit - limit // 8
        #: Bytes of partly assembled messages, all streams.
        self.partial = 0
        #: Bytes of complete messages the application has not taken.
        self.queued = 0
        #: Bytes the reads in progress may return.
        self.reserved = 0
        #: Readers waiting for room (held or stopped).
        self.waiting = 0
        #: Set when *used* goes below the low mark while readers wait.
        self.freed = trio_util.RepeatedEvent()
        #: Times a reader was held or stopped; streams failed with ENOBUFS.
        self.holds = 0
        self.failures = 0

    @property
    def used(self) -> int:
        """Bytes held now: partial messages and complete ones not taken."""
        return self.partial + self.queued

    def read_size(self, own_partial: int, max_read: int) -> int:
        """How much a stream holding ``own_partial`` bytes may read now; 0: wait."""
        used = self.partial + self.queued
        if used < self.limit:
            room = self.limit - used - self.reserved
            return max_read if room >= max_read else max(SMALL, room)
        if self.queued * 2 >= self.limit or own_partial >= SMALL:
            return 0
        return SMALL

    def cannot_fit(self, own_partial: int, announced: int) -> bool:
        """Whether a held stream's message could never fit beside the others' partials."""
        return announced > self.limit - (self.partial - own_partial)

    def taken(self) -> None:
        """Readers wait, and the application took messages (``queued`` is down)."""
        if self.partial + self.queued < self.low:
            self.freed.set()

    def released(self, nbytes: int) -> None:
        """A stream's partial message left the mux (it failed or was unattached)."""
        self.partial -= nbytes
        if self.waiting and self.partial + self.queued < self.low:
            self.freed.set()
