"""``batch-affinity``: the kernel's own behaviour, and the default."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .._policy import Policy
from ._rotation import Rotation

if TYPE_CHECKING:
    from .._socket import KCMSocket
    from .._stream import AttachedStream


class BatchAffinity(Policy):
    """Keep batches together, as the kernel's KCM does.

    Receive: all messages parsed from one read of a stream go to one socket
    (the kernel binds the head of its FIFO of waiting sockets for one read
    pass); the next read, on any stream, goes to the next socket in line.  If
    the bound socket fills up part-way, the rest of the batch goes to the next
    one.  Messages moving between sockets fill the first socket in line before
    the next, as the kernel's requeue does.

    Transmit: a socket keeps the stream it reserved until its queued burst is
    written (``released``); its next burst takes the stream with the fewest
    reservations, and among those the one picked longest ago.  Unlike the
    kernel, a stream is not exclusive to one socket: when every stream is
    reserved, a new burst shares the least reserved one, so a socket that
    never stops sending cannot starve the others -- and a slow stream, whose
    bursts are never done, does not draw every socket onto it in turn.
    """

    # pick_socket answers for the first message of a read for all the rest.
    batch_affine = True

    def __init__(self) -> None:
        self._sockets: Rotation[KCMSocket] = Rotation()
        # Membership without a method call: pick_socket runs once per message.
        self._socket_line = self._sockets._line
        self._bound: dict[AttachedStream, KCMSocket] = {}
        # Transmit: each stream's key is (reservations, when last picked); the
        # heap holds keys, some stale (lazy deletion: a key counts only while
        # it is the stream's current one).  O(log n) per pick and release.
        # With one stream there is nothing to choose: the heap is kept only
        # while there are two or more (rebuilt from the keys when a second
        # stream comes), which saves a sender on one stream its heap work.
        self._keys: dict[AttachedStream, tuple[int, int]] = {}
        self._heap: list[tuple[int, int, int, AttachedStream]] = []
        self._clock = itertools.count()
        self._reserved: dict[KCMSocket, AttachedStream] = {}

    def socket_added(self, sock: KCMSocket, /) -> None:
        self._sockets.add(sock)

    def socket_removed(self, sock: KCMSocket, /) -> None:
        self._sockets.discard(sock)

    def pick_socket(self, stream: AttachedStream | None, message: bytes, /) -> KCMSocket | None:
        if stream is None:
            # Moved or held messages: fill the head of the line first.
            return self._sockets.head()
        sock = self._bound.get(stream)
        if sock is not None and sock in self._socket_line:
            return sock
        sock = self._sockets.take()
        if sock is not None:
            self._bound[stream] = sock
        return sock

    def read_done(self, stream: AttachedStream | None, /) -> None:
        if stream is not None:
            self._bound.pop(stream, None)

    def stream_added(self, stream: AttachedStream, /) -> None:
        self._set_key(stream, 0, next(self._clock))
        if len(self._keys) == 2:  # a choice again: the heap from the keys
            self._heap = [(c, p, id(s), s) for s, (c, p) in self._keys.items()]
            heapq.heapify(self._heap)

    def stream_removed(self, stream: AttachedStream, /) -> None:
        self._keys.pop(stream, None)  # its heap entries are stale now
        if len(self._keys) < 2:
            self._heap = []
        self._bound.pop(stream, None)
        # No released() follows for a removed stream: drop its reservations.
        for sock in [s for s, reserved in self._reserved.items() if reserved is stream]:
            del self._reserved[sock]

    def pick_stream(
        self, sock: KCMSocket, messages: Sequence[bytes], nbytes: int, /
    ) -> AttachedStream | None:
        stream = self._reserved.get(sock)
        if stream is not None and stream in self._keys:
            return stream
        keys = self._keys
        if len(keys) == 1:
            ((stream, (count, _)),) = keys.items()
            self._reserved[sock] = stream
            keys[stream] = (count + 1, next(self._clock))
            return stream
        heap = self._heap
        while heap:
            count, picked, _, stream = heap[0]
            if keys.get(stream) == (count, picked):
                break
            heapq.heappop(heap)
        else:
            return None
        self._reserved[sock] = stream
        self._set_key(stream, count + 1, next(self._clock))
        return stream

    def released(self, stream: AttachedStream, sock: KCMSocket, /) -> None:
        if self._reserved.get(sock) is stream:
            del self._reserved[sock]
            key = self._keys.get(stream)
            if key is not None:
                self._set_key(stream, key[0] - 1, key[1])

    def _set_key(self, stream: AttachedStream, count: int, picked: int) -> None:
        self._keys[stream] = (count, picked)
        if len(self._keys) < 2:
            return  # nothing to choose between: no heap (see __init__)
        heap = self._heap
        # id() breaks ties between equal keys, which only stale entries share.
        heapq.heappush(heap, (count, picked, id(stream), stream))
        if len(heap) > 4 * len(self._keys) + 16:
            keys = self._keys
            self._heap = [e for e in heap if keys.get(e[3]) == (e[0], e[1])]
            heapq.heapify(self._heap)
