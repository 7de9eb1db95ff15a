"""``round-robin``: every message to the next socket, every group to the next stream."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .._policy import Policy
from ._rotation import Rotation

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
        self._sockets: Rotation[KCMSocket] = Rotation()
        self._streams: Rotation[AttachedStream] = Rotation()

    def socket_added(self, sock: KCMSocket, /) -> None:
        self._sockets.add(sock)

    def socket_removed(self, sock: KCMSocket, /) -> None:
        self._sockets.discard(sock)

    def pick_socket(self, stream: AttachedStream | None, message: bytes, /) -> KCMSocket | None:
        return self._sockets.take()

    def stream_added(self, stream: AttachedStream, /) -> None:
        self._streams.add(stream)

    def stream_removed(self, stream: AttachedStream, /) -> None:
        self._streams.discard(stream)

    def pick_stream(
        self, sock: KCMSocket, messages: Sequence[bytes], nbytes: int, /
    ) -> AttachedStream | None:
        return self._streams.take()
