"""``batch-affinity``: the kernel's own behaviour, and the default."""

from __future__ import annotations

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
    written (``released``); its next burst takes the stream that was picked
    longest ago.  Unlike the kernel, a stream is not exclusive to one socket:
    several sockets may have bursts queued on one stream, so a socket that
    never stops sending cannot starve the others.
    """

    def __init__(self) -> None:
        self._sockets: Rotation[KCMSocket] = Rotation()
        self._bound: dict[AttachedStream, KCMSocket] = {}
        self._streams: Rotation[AttachedStream] = Rotation()
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
        if sock is not None and sock in self._sockets:
            return sock
        sock = self._sockets.take()
        if sock is not None:
            self._bound[stream] = sock
        return sock

    def read_done(self, stream: AttachedStream | None, /) -> None:
        if stream is not None:
            self._bound.pop(stream, None)

    def stream_added(self, stream: AttachedStream, /) -> None:
        self._streams.add(stream)

    def stream_removed(self, stream: AttachedStream, /) -> None:
        self._streams.discard(stream)
        self._bound.pop(stream, None)
        # No released() follows for a removed stream: drop its reservations.
        for sock in [s for s, reserved in self._reserved.items() if reserved is stream]:
            del self._reserved[sock]

    def pick_stream(
        self, sock: KCMSocket, messages: Sequence[bytes], nbytes: int, /
    ) -> AttachedStream | None:
        stream = self._reserved.get(sock)
        if stream is not None and stream in self._streams:
            return stream
        stream = self._streams.take()
        if stream is not None:
            self._reserved[sock] = stream
        return stream

    def released(self, stream: AttachedStream, sock: KCMSocket, /) -> None:
        if self._reserved.get(sock) is stream:
            del self._reserved[sock]
