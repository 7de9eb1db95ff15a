"""The handle of an attached stream (the kernel's psock)."""

from __future__ import annotations

import errno
import math
import os
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, final

import trio

from ._assembler import Assembler
from ._parsers import Parser
from ._stats import StreamState, StreamStatistics
from ._tcpinfo import TCPInfo, tcp_info_of

if TYPE_CHECKING:
    from ._errors import StreamError
    from ._mux import Mux
    from ._socket import KCMSocket

__all__ = ["AttachedStream"]


def _eager_sender(stream: trio.abc.Stream) -> Callable[[bytes], int] | None:
    """A non-blocking write for a plain :class:`trio.SocketStream`, else ``None``.

    Trio keeps its sockets non-blocking, so a write the kernel can take at
    once needs no wait: the sending task can make it itself, without a trip
    through the stream's writer task (see ``Mux._write_eagerly``).  The file
    descriptor is asked for at each write: once the socket is closed it is
    ``-1``, never a number reused by something else.
    """
    if os.name != "posix" or type(stream) is not trio.SocketStream:
        return None
    sock = stream.socket
    fd = sock.fileno()
    if fd < 0 or os.get_blocking(fd):
        return None

    def send(data: bytes) -> int:
        fd = sock.fileno()
        if fd < 0:
            raise OSError(errno.EBADF, "the socket is closed")
        return os.write(fd, data)

    return send


class TxGroup:
    """Internal: messages of one socket that go out together, on one stream."""

    __slots__ = ("messages", "nbytes", "picked_at", "sock")

    #: Sent with ``send_to``: bound to its stream, unknown to the policy.
    pinned = False

    def __init__(self, sock: KCMSocket, messages: list[bytes], nbytes: int) -> None:
        self.sock = sock
        self.messages = messages
        self.nbytes = nbytes
        self.picked_at = 0.0


class PinnedTxGroup(TxGroup):
    """Internal: a group from ``send_to``; it never moves to another stream."""

    __slots__ = ()

    pinned = True


@final
class AttachedStream:
    """A stream attached to a mux: what :meth:`Mux.attach` returns.

    The mux owns the stream from attach until :meth:`Mux.unattach` (or, for a
    failed stream with ``auto_close=True``, until it closed it): do not read
    from or write to it meanwhile.  Handles are hashable and compare by
    identity; they are made by the mux, not by you.
    """

    __slots__ = (
        "__weakref__",
        "_assembler",
        "_assembly_timeout",
        "_deadline",
        "_done",
        "_eager_send",
        "_eager_window",
        "_error",
        "_held",
        "_index",
        "_inflight",
        "_mux",
        "_owners",
        "_parser",
        "_paused_since",
        "_reader_scope",
        "_released",
        "_reserved",
        "_rest",
        "_rx_msg_timeouts",
        "_rx_paused",
        "_scope",
        "_stalled_at",
        "_state",
        "_stream",
        "_tx_aborts",
        "_tx_bytes",
        "_tx_candidate",
        "_tx_msgs",
        "_tx_pending",
        "_tx_queued_bytes",
        "_tx_queued_msgs",
        "_unattaching",
        "_unread",
        "_unreserved",
        "_writer_lot",
    )

    def __init__(
        self,
        mux: Mux,
        stream: trio.abc.Stream,
        parser: Parser,
        index: int,
        max_message_size: int,
        assembly_timeout: float | None,
    ) -> None:
        self._mux = mux
        self._stream = stream
        self._parser = parser
        self._index = index
        self._assembler = Assembler(parser, max_message_size)
        self._assembly_timeout = assembly_timeout
        self._deadline = math.inf
        self._state = StreamState.ACTIVE
        self._scope = trio.CancelScope()
        self._reader_scope = trio.CancelScope()
        self._done = trio.Event()
        self._error: StreamError | None = None
        self._unattaching = False
        self._released = False
        self._unread = b""
        # transmit
        self._tx_candidate = False
        self._stalled_at: float | None = None
        self._tx_pending: deque[TxGroup] = deque()
        self._tx_queued_bytes = 0
        self._tx_queued_msgs = 0
        self._inflight: list[TxGroup] | None = None
        # A write the sending task began (Mux._write_eagerly): what is left of
        # it, and its size, for the writer to finish.
        self._rest: tuple[memoryview, int] | None = None
        self._eager_send = _eager_sender(stream)
        # The sending task wrote to it itself and has not yet passed its
        # schedule point (Mux._end_send).
        self._eager_window = False
        self._owners: dict[KCMSocket, int] = {}
        self._writer_lot = trio.lowlevel.ParkingLot()
        # receive: complete messages waiting for a socket with room
        self._held: list[bytes] = []
        self._paused_since: float | None = None
        self._rx_paused = 0.0
        # counters
        self._tx_msgs = 0
        self._tx_bytes = 0
        self._reserved = 0
        self._unreserved = 0
        self._tx_aborts = 0
        self._rx_msg_timeouts = 0

    @property
    def stream(self) -> trio.abc.Stream:
        """The attached :class:`trio.abc.Stream`."""
        return self._stream

    @property
    def state(self) -> StreamState:
        """``"active"``, ``"failed"`` or ``"unattached"`` (a :class:`StreamState`)."""
        return self._state

    @property
    def index(self) -> int:
        """Its number in the mux (lowest free when attached), as ``psock-N`` in /proc."""
        return self._index

    @property
    def parser(self) -> Parser:
        """The parser that delineates messages read from this stream."""
        return self._parser

    @property
    def unread_data(self) -> bytes:
        """Bytes read from the stream but not part of a complete message.

        Set by :meth:`Mux.unattach`: the start of a message that had not fully
        arrived.  The stream hands back everything after them, so
        ``unread_data`` followed by what the stream yields next is exactly what
        the peer sent after the last delivered message.  Empty before unattach
        and for a stream that failed (the discarded bytes are then in
        :attr:`StreamError.partial_bytes`).
        """
        return self._unread

    @property
    def stalled(self) -> bool:
        """Whether its write is stalled (see ``tx_stall_timeout`` in :func:`open_mux`)."""
        return self._stalled_at is not None

    @property
    def tx_queued_bytes(self) -> int:
        """Bytes queued on this stream and not written yet (cheap; for policies)."""
        return self._tx_queued_bytes

    def tcp_info(self) -> TCPInfo | None:
        """Read the kernel's ``TCP_INFO`` for the TCP connection under this stream.

        Works for a :class:`trio.SocketStream` over TCP, and for a stream that
        wraps one through ``transport_stream`` (e.g. :class:`trio.SSLStream`).

        Returns:
          A :class:`TCPInfo` (retransmits, rtt, ...), or ``None`` when there is
          no TCP socket under the stream or it is closed.

        """
        return tcp_info_of(self._stream)

    def statistics(self) -> StreamStatistics:
        """Return a snapshot of this stream's counters."""
        asm = self._assembler
        paused = self._rx_paused
        if self._paused_since is not None:
            paused += trio.current_time() - self._paused_since
        return StreamStatistics(
            rx_msgs=asm.msgs,
            rx_bytes=asm.bytes,
            tx_msgs=self._tx_msgs,
            tx_bytes=self._tx_bytes,
            reserved=self._reserved,
            unreserved=self._unreserved,
            tx_aborts=self._tx_aborts,
            rx_need_more_hdr=asm.need_more_hdr,
            rx_bad_hdr_len=asm.bad_hdr_len,
            rx_msg_too_big=asm.msg_too_big,
            rx_msg_timeouts=self._rx_msg_timeouts,
            rx_paused=paused,
            tx_queued_msgs=self._tx_queued_msgs,
            tx_queued_bytes=self._tx_queued_bytes,
            state=self._state,
        )

    def __repr__(self) -> str:
        return f"<AttachedStream psock-{self._index} {self._state.value} {self._stream!r}>"
