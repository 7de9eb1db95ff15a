"""``least-queued``: the shortest receive queue, the least-loaded stream."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Generic, TypeVar

from .._policy import Policy

if TYPE_CHECKING:
    from .._socket import KCMSocket
    from .._stream import AttachedStream

T = TypeVar("T")


class _LeastHeap(Generic[T]):
    """Candidates keyed by a load that changes, with O(log n) picks.

    Entries are ``(load, seq, item)``; an entry is stale once the item left the
    candidates or its load changed, and stale entries are dropped when they
    reach the top (or all at once when they outnumber the live ones).  Among
    equal loads the entry pushed first wins, so ties go round in turn.
    """

    __slots__ = ("_heap", "_items", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, T]] = []
        self._items: set[T] = set()
        self._seq = itertools.count()

    def add(self, item: T, load: int) -> None:
        self._items.add(item)
        self.update(item, load)

    def discard(self, item: T) -> None:
        self._items.discard(item)

    def update(self, item: T, load: int) -> None:
        if item in self._items:
            heapq.heappush(self._heap, (load, next(self._seq), item))
            if len(self._heap) > 2 * len(self._items) + 32:
                self._compact()

    def pick(self, load_of: Callable[[T], int], added: int) -> T | None:
        """Return the least-loaded candidate, now ``added`` more loaded."""
        heap = self._heap
        items = self._items
        while heap:
            load, _, item = heap[0]
            if item in items and load == load_of(item):
                heapq.heapreplace(heap, (load + added, next(self._seq), item))
                return item
            heapq.heappop(heap)
        return None

    def _compact(self) -> None:
        latest: dict[T, tuple[int, int, T]] = {}
        for entry in self._heap:
            if entry[2] in self._items:
                old = latest.get(entry[2])
                if old is None or entry[1] > old[1]:
                    latest[entry[2]] = entry
        self._heap = list(latest.values())
        heapq.heapify(self._heap)


class LeastQueued(Policy):
    """The emptiest socket, the least-loaded stream; ties in turn.

    Receive: each message goes to the eligible socket with the fewest bytes in
    its receive queue.  Transmit: each group goes to the stream with the fewest
    bytes queued and not yet written.  Among equals, the one that has waited
    longest since it was last picked or changed.  O(log n) per pick.  Good when
    workers (or connections) run at different speeds.
    """

    def __init__(self) -> None:
        self._rx: _LeastHeap[KCMSocket] = _LeastHeap()
        self._tx: _LeastHeap[AttachedStream] = _LeastHeap()

    def socket_added(self, sock: KCMSocket, /) -> None:
        self._rx.add(sock, sock.rx_queued_bytes)

    def socket_removed(self, sock: KCMSocket, /) -> None:
        self._rx.discard(sock)

    def socket_drained(self, sock: KCMSocket, nbytes: int, /) -> None:
        self._rx.update(sock, sock.rx_queued_bytes)

    def pick_socket(self, stream: AttachedStream | None, message: bytes, /) -> KCMSocket | None:
        return self._rx.pick(_rx_load, len(message))

    def stream_added(self, stream: AttachedStream, /) -> None:
        self._tx.add(stream, stream.tx_queued_bytes)

    def stream_removed(self, stream: AttachedStream, /) -> None:
        self._tx.discard(stream)

    def written(
        self, stream: AttachedStream, sock: KCMSocket, nbytes: int, seconds: float, /
    ) -> None:
        self._tx.update(stream, stream.tx_queued_bytes)

    def withdrawn(self, stream: AttachedStream, sock: KCMSocket, nbytes: int, /) -> None:
        self._tx.update(stream, stream.tx_queued_bytes)

    def pick_stream(
        self, sock: KCMSocket, messages: Sequence[bytes], nbytes: int, /
    ) -> AttachedStream | None:
        return self._tx.pick(_tx_load, nbytes)


def _rx_load(sock: KCMSocket) -> int:
    return sock.rx_queued_bytes


def _tx_load(stream: AttachedStream) -> int:
    return stream.tx_queued_bytes
