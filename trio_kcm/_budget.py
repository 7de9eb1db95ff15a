"""The receive side's memory budget: what a mux may hold of what its streams sent.

The kernel's KCM never holds a partial message itself: the bytes stay in the
TCP receive queue, bounded by ``SO_RCVBUF`` per connection and by the
system's TCP memory limits across them.  A mux assembles messages in Python
memory, so it bounds them itself, across all its streams.

What counts against the limit (*load*):

* each stream's *charge*: for a message whose header announced a length
  above ``SMALL`` and which was *admitted*, that whole length, paid in
  advance; otherwise the bytes it holds of its partial message;
* complete messages the application has not taken yet (waiting on their
  stream, in the hold queue, in sockets' queues);
* reads in progress, which reserve the bytes they may return, so that reads
  started together cannot overshoot together.

The rules:

1. *Admission.*  A message announced above ``SMALL`` bytes is admitted when
   its whole length fits beside the load; an admitted message is read to its
   end at full speed, since it is paid for, and so it always finishes.  One
   that does not fit waits at its header, its stream not read (TCP's window
   then pushes back on the peer), until it does: streams with large messages
   take turns, and none fails for want of room -- except a message larger
   than the limit itself, which never could fit: ``ENOBUFS``.
2. *Reading otherwise* (small or unknown-length messages, boundaries): below
   the limit a read asks for up to ``READ_SIZE`` bytes, no more than the room
   left (at least ``SMALL``).  At the limit, if complete messages fill half
   of it the application is behind, and every such reader waits for room;
   otherwise a stream holding ``SMALL`` bytes or more of an unknown-length
   message waits, and the others read ``SMALL`` bytes at a time, so small
   messages keep flowing past admitted and waiting large ones.

Waiting readers are woken smallest need first (a heap), each once its need
fits.  So what the mux holds stays below the limit plus the reads in
progress -- together at most the limit again, since each read is sized by
the room left, and ``SMALL`` per stream once none is left -- plus under
``SMALL`` of partial message per stream (and each assembler's own
overhead), whatever the peers send.
"""

from __future__ import annotations

import heapq
import itertools
from typing import final

import trio

__all__ = ["SMALL", "Budget"]

#: The read size under pressure; messages up to this size need no admission.
SMALL = 4096


@final
class Budget:
    """The bytes held of received data, against ``limit``; see the module doc."""

    __slots__ = (
        "_order",
        "charged",
        "failures",
        "holds",
        "limit",
        "queued",
        "reserved",
        "waiters",
        "waiting",
    )

    def __init__(self, limit: int) -> None:
        if limit < 2 * SMALL:
            raise ValueError(f"receive_memory_limit must be >= {2 * SMALL}")
        self.limit = limit
        #: The streams' charges: admitted lengths, or the partial bytes held.
        self.charged = 0
        #: Bytes of complete messages the application has not taken.
        self.queued = 0
        #: Bytes the reads in progress may return.
        self.reserved = 0
        #: Readers waiting for room: (need, order, event), smallest need first;
        #: a waiter that was cancelled leaves its entry, with its event set.
        self.waiters: list[tuple[int, int, trio.Event]] = []
        #: How many readers wait now.
        self.waiting = 0
        self._order = itertools.count()
        #: Times a reader waited for room; streams failed with ENOBUFS.
        self.holds = 0
        self.failures = 0

    @property
    def used(self) -> int:
        """Bytes held or paid for now: charges and complete messages not taken."""
        return self.charged + self.queued

    def room(self) -> int:
        """Bytes a new read or admission may take now."""
        return self.limit - self.charged - self.queued - self.reserved

    def admits(self, charge: int, announced: int) -> bool:
        """Whether a message of ``announced`` bytes fits, its stream's ``charge`` aside.

        Reads in progress are not counted: an idle stream's reader reserves
        its next read while it waits, and with many idle streams those
        reservations would keep every large message out.
        """
        return announced - charge <= self.limit - self.charged - self.queued

    def read_size(self, charge: int, max_read: int) -> int:
        """How much a stream charged ``charge`` (no admitted message) may read; 0: wait."""
        room = self.room()
        if self.charged + self.queued < self.limit:
            return max_read if room >= max_read else max(SMALL, room)
        if self.queued * 2 >= self.limit or charge >= SMALL:
            return 0
        return SMALL

    async def wait(self, need: int) -> None:
        """Wait until ``need`` more bytes fit (woken smallest need first)."""
        if not self.waiting and self.waiters:
            self.waiters.clear()  # cancelled waiters' entries, nobody else
        event = trio.Event()
        heapq.heappush(self.waiters, (need, next(self._order), event))
        self.holds += 1
        self.waiting += 1
        try:
            await event.wait()
        finally:
            self.waiting -= 1
            if not event.is_set():
                # Cancelled: its entry stays, marked (O(1), where removing
                # it would cost O(n) for each of the n readers a closing
                # mux cancels); wake() drops it when it comes up.
                event.set()

    def wake(self) -> None:
        """Room may have grown: wake the waiters whose need fits, smallest first."""
        waiters = self.waiters
        room = self.limit - self.charged - self.queued
        while waiters and (waiters[0][0] <= room or waiters[0][2].is_set()):
            need, _, event = heapq.heappop(waiters)
            if event.is_set():
                continue  # a cancelled waiter's entry
            event.set()
            room -= need  # so one freed byte wakes one waiter, not all
        if not self.waiting:
            waiters.clear()  # only cancelled entries were left
