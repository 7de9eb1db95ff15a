"""The receive side's memory budget: what a mux may hold of what its streams sent.

The kernel's KCM never holds a partial message itself: the bytes stay in the
TCP receive queue, bounded by ``SO_RCVBUF`` per connection and by the
system's TCP memory limits across them.  A mux assembles messages in Python
memory, so it bounds them itself, across all its streams.

The limit is split in two.  Three quarters (*hold*) are for what the mux
holds:

* each stream's *charge*: for a message whose header announced a length
  above ``SMALL`` and which was *admitted*, that whole length, paid in
  advance; otherwise the bytes it holds of its partial message;
* complete messages the application has not taken yet (waiting on their
  stream, in the hold queue, in sockets' queues).

The last quarter (*reads*) is for reads in progress: each reserves the bytes
it may return, so that reads started together cannot overshoot together --
and an idle stream's reader, which reserves its next read while it waits,
cannot keep large messages out of the hold.

The rules:

1. *Admission.*  A message announced above ``SMALL`` bytes is admitted when
   its whole length fits in the hold beside what is there; an admitted
   message is read to its end at full speed, since it is paid for, and so it
   always finishes.  One that does not fit waits at its header, its stream
   not read (TCP's window then pushes back on the peer), until it does:
   streams with large messages take turns, and none fails for want of room
   -- except a message larger than the hold itself, which never could fit:
   ``ENOBUFS``.
2. *Reading otherwise* (small or unknown-length messages, boundaries): while
   the hold is not full a read asks for up to ``READ_SIZE`` bytes, no more
   than what is left of the reads' quarter (at least ``SMALL``).  Once it is
   full, if complete messages fill half of it the application is behind, and
   every such reader waits for room; otherwise a stream holding ``SMALL``
   bytes or more of an unknown-length message waits, and the others read
   ``SMALL`` bytes at a time, so small messages keep flowing past admitted
   and waiting large ones.

Waiting readers are woken smallest need first (a heap), each once its need
fits.  So what the mux holds stays below the limit, plus ``SMALL`` per
stream for a read once the reads' quarter is spent, plus under ``SMALL`` of
partial message per stream (and each buffer's own overhead), whatever the
peers send.
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
        "hold",
        "holds",
        "limit",
        "queued",
        "reads",
        "reserved",
        "waiters",
        "waiting",
    )

    def __init__(self, limit: int) -> None:
        if limit < 2 * SMALL:
            raise ValueError(f"receive_memory_limit must be >= {2 * SMALL}")
        self.limit = limit
        #: The quarter for reads in progress, and the rest, for what is held.
        self.reads = limit // 4
        self.hold = limit - self.reads
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
        """Bytes the hold may take now."""
        return self.hold - self.charged - self.queued

    def admit(self, charge: int, announced: int) -> bool:
        """Admit a message of ``announced`` bytes if it fits, its stream's ``charge`` aside.

        Admitted, the stream's charge becomes ``announced`` (counted here);
        returns whether it was.
        """
        if announced - charge > self.room():
            return False
        self.charged += announced - charge
        return True

    def recharge(self, old: int, new: int) -> None:
        """A stream's charge went from ``old`` to ``new`` bytes."""
        self.charged += new - old

    def release(self, charge: int) -> None:
        """A stream left with ``charge`` bytes charged: they are free again."""
        self.charged -= charge
        if self.waiting:
            self.wake()

    def read_size(self, charge: int, max_read: int) -> int:
        """How much a stream charged ``charge`` (no admitted message) may read; 0: wait."""
        if self.charged + self.queued < self.hold:
            pool = self.reads - self.reserved
            return max_read if pool >= max_read else max(SMALL, pool)
        if self.queued * 2 >= self.hold or charge >= SMALL:
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
        room = self.room()
        while waiters and (waiters[0][0] <= room or waiters[0][2].is_set()):
            need, _, event = heapq.heappop(waiters)
            if event.is_set():
                continue  # a cancelled waiter's entry
            event.set()
            room -= need  # so one freed byte wakes one waiter, not all
        if not self.waiting:
            waiters.clear()  # only cancelled entries were left
