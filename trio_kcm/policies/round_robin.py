"""``round-robin``: every message to the next socket, every group to the next stream."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .._policy import Policy

if TYPE_CHECKING:
    from .._socket import KCMSocket
    from .._stream import AttachedStream


class RoundRobin(Policy):
    """Round-robin per message (receive) and per group (transmit).

    Each received message goes to the eligible socket that was picked longest
    ago; each transmit group (a message, or a batch) to the stream picked
    longest ago.  O(1) per pick.  Spreads load evenly when messages cost the
    same to handle; gives up the batching of ``batch-affinity``.
    """

    def __init__(self) -> None:
        self._sockets: OrderedDict[KCMSocket, None] = OrderedDict()
        self._streams: OrderedDict[AttachedStream, None] = OrderedDict()

    def socket_added(self, sock: KCMSocket, /) -> None:
        self._sockets[sock] = None

    def socket_removed(self, sock: KCMSocket, /) -> None:
        self._sockets.pop(sock, None)

    def pick_socket(self, stream: AttachedStream | None, message: bytes, /) -> KCMSocket | None:
        sockets = self._sockets
        if not sockets:
            return None
        sock = next(iter(sockets))
        sockets.move_to_end(sock)
        return sock

    def stream_added(self, stream: AttachedStream, /) -> None:
        self._streams[stream] = None

    def stream_removed(self, stream: AttachedStream, /) -> None:
        self._streams.pop(stream, None)

    def pick_stream(
        self, sock: KCMSocket, messages: Sequence[bytes], nbytes: int, /
    ) -> AttachedStream | None:
        streams = self._streams
        if not streams:
            return None
        stream = next(iter(streams))
        streams.move_to_end(stream)
        return stream
