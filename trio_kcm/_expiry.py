"""When accepted messages go stale: the deadlines of groups, and the task that acts on them.

A socket opened with ``time_to_live`` or ``expire_at_deadline`` gives each
group it accepts a time (``ExpiringTxGroup.expires``); :class:`Expiry` keeps those
times in a heap, and its task sleeps until the earliest and then hands the
groups that are due to the transmit scheduler, which withdraws those still
waiting (:meth:`Transmitter.withdraw_late
<trio_kcm._transmit.Transmitter.withdraw_late>`).  A group written or given up
in the meantime is marked ``GONE`` (:meth:`Expiry.gone`) and merely leaves
the heap, with the others that are gone, at the task's next wake; and when
no group in the heap is still waiting, the heap is emptied at once, so it
holds no more than the groups accepted within one time-to-live.

The task runs in the mux's nursery, started with the first such socket; a
mux none of whose sockets expire messages has no task and no heap.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, final

import trio

from ._txstate import GONE

if TYPE_CHECKING:
    from ._txstate import ExpiringPinnedTxGroup, ExpiringTxGroup, TxGroup

    Stale = ExpiringTxGroup | ExpiringPinnedTxGroup

__all__ = ["Expiry"]


@final
class Expiry:
    """A heap of (expires, order, group), and the task that sleeps until the first."""

    __slots__ = ("_heap", "_order", "_sleep", "_started", "_stop", "live")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Stale]] = []
        #: Groups with a time that were neither written nor given up yet.
        self.live = 0
        self._order = itertools.count()  # ties: first accepted, first out
        #: The task's sleep: its deadline is the earliest expiry.
        self._sleep: trio.CancelScope | None = None
        self._stop = trio.CancelScope()
        self._started = False

    def add(self, group: Stale) -> None:
        """``group`` goes stale at ``group.expires`` if it is still unwritten then."""
        heapq.heappush(self._heap, (group.expires, next(self._order), group))
        self.live += 1
        sleep = self._sleep
        if sleep is not None and group.expires < sleep.deadline:
            sleep.deadline = group.expires

    def gone(self, group: Stale) -> None:
        """``group`` (which has a time) was written, given up or withdrawn."""
        group.expires = GONE
        self.live -= 1
        if not self.live:
            self._heap.clear()
            if self._sleep is not None:
                self._sleep.deadline = math.inf

    def start(self, nursery: trio.Nursery, withdraw: Callable[[Sequence[TxGroup]], None]) -> None:
        """Start the task in ``nursery``, unless it runs already (see :meth:`run`)."""
        if not self._started:
            self._started = True
            nursery.start_soon(self.run, withdraw)

    async def run(self, withdraw: Callable[[Sequence[TxGroup]], None]) -> None:
        """Hand each batch of due groups to ``withdraw``, until :meth:`stop`."""
        heap = self._heap
        with self._stop:
            while True:
                with trio.CancelScope(deadline=heap[0][0] if heap else math.inf) as sleep:
                    self._sleep = sleep
                    await trio.sleep_forever()
                self._sleep = None
                now = trio.current_time()
                due = []
                # The groups due, and those gone before the first still waiting.
                while heap and (heap[0][0] <= now or heap[0][2].expires == GONE):
                    group = heapq.heappop(heap)[2]
                    if group.expires != GONE:
                        due.append(group)
                if due:
                    withdraw(due)

    def stop(self) -> None:
        """The mux is closing: the task ends."""
        self._stop.cancel()
