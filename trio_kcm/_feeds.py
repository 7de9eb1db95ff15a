"""The monitor's feeds: bounded queues of stream errors and of events.

:meth:`Mux.errors` and :meth:`Mux.events` iterate over a :class:`Feed`.  Each
item is taken once, by whichever task asks first; items wait until taken, so
a monitor that starts late sees what happened before, within a bound that
keeps memory bounded when nobody monitors.  Iteration ends once the feed is
closed (the mux has finished) and empty.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar, final

import trio

from ._errors import StreamError

__all__ = ["ERROR_BACKLOG", "EVENT_BACKLOG", "ErrorFeed", "Feed"]

#: Errors of streams no longer attached that may wait for a monitor; beyond
#: it the oldest are dropped (errors of attached streams are always kept).
ERROR_BACKLOG = 1024
#: Events that may wait for a monitor; beyond it the oldest are dropped.
EVENT_BACKLOG = 1024

_T = TypeVar("_T")


class Feed(Generic[_T]):
    """A queue of items for monitors; beyond ``backlog`` the oldest are dropped."""

    __slots__ = ("backlog", "closed", "dropped", "items", "lot")

    def __init__(self, backlog: int) -> None:
        self.items: deque[_T] = deque()
        self.lot = trio.lowlevel.ParkingLot()
        self.backlog = backlog
        self.dropped = 0
        self.closed = False

    def put(self, item: _T) -> None:
        """Queue ``item`` and wake one waiting monitor."""
        self.items.append(item)
        self.trim()
        self.lot.unpark()

    def trim(self) -> None:
        """Drop the oldest items beyond the backlog, counting them."""
        items = self.items
        while len(items) > self.backlog:
            items.popleft()
            self.dropped += 1

    def close(self) -> None:
        """No more items will come: monitors end once they took what is left."""
        self.closed = True
        self.lot.unpark_all()

    def iterate(self) -> FeedIterator[_T]:
        """An async iterator over the items, each taken once."""
        return FeedIterator(self)


@final
class ErrorFeed(Feed[StreamError]):
    """The error feed: an error of a stream still attached is never dropped.

    At most one error per attached stream, plus ``backlog`` errors of streams
    that are gone: beyond that the oldest of those are dropped (each was
    logged when it happened).  ``attached`` tells how many streams are
    attached and ``gone`` whether an error's stream has left the mux.
    """

    __slots__ = ("attached", "gone")

    def __init__(
        self, backlog: int, attached: Callable[[], int], gone: Callable[[StreamError], bool]
    ) -> None:
        super().__init__(backlog)
        self.attached = attached
        self.gone = gone

    def trim(self) -> None:
        items = self.items
        while len(items) > self.backlog + self.attached():
            for i, old in enumerate(items):
                if self.gone(old):
                    del items[i]
                    self.dropped += 1
                    break
            else:  # pragma: no cover - one error per attached stream at most
                return


@final
class FeedIterator(Generic[_T]):
    """The async iterator returned by :meth:`Mux.errors` and :meth:`Mux.events`."""

    __slots__ = ("_feed",)

    def __init__(self, feed: Feed[_T]) -> None:
        self._feed = feed

    def __aiter__(self) -> FeedIterator[_T]:
        return self

    async def __anext__(self) -> _T:
        feed = self._feed
        items = feed.items
        await trio.lowlevel.checkpoint_if_cancelled()
        while not items:
            if feed.closed:
                raise StopAsyncIteration
            await feed.lot.park()
        item = items.popleft()
        await trio.lowlevel.cancel_shielded_checkpoint()
        return item
