"""The handle of an attached stream (the kernel's psock), and its record.

An attached stream's state lives in three records, each owned by the module
that changes it: :class:`StreamLife` here (its phase and task tree, changed
only by ``_lifecycle.py``), a ``StreamTx`` (``_transmit.py``: what is queued
on it and in flight) and a ``StreamRx`` (``_receive.py``: its assembler and
the messages waiting for a socket).  The :class:`AttachedStream` handle the
application and the policies see only reads them.
"""

from __future__ import annotations

import errno as _errno
import math
import os
from typing import TYPE_CHECKING, NoReturn, final

import trio

from ._parsers import Parser
from ._state import PUBLIC, Phase
from ._stats import StreamState, StreamStatistics
from ._tcpinfo import TCPInfo, tcp_info_of

if TYPE_CHECKING:
    from ._errors import StreamError
    from ._receive import StreamRx
    from ._txstate import StreamTx

__all__ = ["AttachedStream", "StreamLife", "life_of", "plain_socket", "raise_socket_error"]


def plain_socket(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    """The socket of a plain :class:`trio.SocketStream`, open and non-blocking; else ``None``.

    The eager write and the reader's wait-then-read use it directly (POSIX
    only): Trio keeps its sockets non-blocking, so a system call on it never
    blocks.  Any other stream (TLS, in-memory, a wrapper) goes through its
    own methods.
    """
    if os.name != "posix" or type(stream) is not trio.SocketStream:
        return None
    sock = stream.socket
    fd = sock.fileno()
    if fd < 0 or os.get_blocking(fd):
        return None
    return sock


def raise_socket_error(exc: OSError) -> NoReturn:
    """Raise what ``SocketStream`` raises for ``exc``, a system call's error on its socket.

    A closed socket (``EBADF``, also the file descriptor -1 that a closed trio
    socket reports) is :exc:`trio.ClosedResourceError`; anything else
    :exc:`trio.BrokenResourceError` caused by ``exc``.
    """
    if exc.errno == _errno.EBADF:
        raise trio.ClosedResourceError("the socket was closed") from None
    raise trio.BrokenResourceError(f"socket connection broken: {exc}") from exc


@final
class StreamLife:
    """Internal: one attached stream's life (see ``_state.py`` for its phases)."""

    __slots__ = (
        "done",
        "error",
        "handle",
        "index",
        "owner",
        "parser",
        "phase",
        "released",
        "rx",
        "scope",
        "stalled_at",
        "transport",
        "tx",
        "unread",
    )

    def __init__(
        self, owner: object, transport: trio.abc.Stream, parser: Parser, index: int
    ) -> None:
        #: The mux it is attached to (compared by identity only).
        self.owner = owner
        self.transport = transport
        self.parser = parser
        self.index = index
        self.phase = Phase.ACTIVE
        #: The cancel scope of its task tree.
        self.scope = trio.CancelScope()
        #: Set when its tasks have all ended.
        self.done = trio.Event()
        #: Set when it left the mux (a final phase).
        self.released = trio.Event()
        self.error: StreamError | None = None
        self.unread = b""
        #: When its write was seen stalled (phase STALLED).
        self.stalled_at = math.nan
        # Set by the lifecycle as it attaches the stream, in this order.
        self.tx: StreamTx
        self.rx: StreamRx
        self.handle: AttachedStream


def life_of(handle: AttachedStream) -> StreamLife:
    """The record behind a handle."""
    return handle._life


@final
class AttachedStream:
    """A stream attached to a mux: what :meth:`Mux.attach` returns.

    The mux owns the stream from attach until :meth:`Mux.unattach` (or, for a
    failed stream with ``auto_close=True``, until it closed it): do not read
    from or write to it meanwhile.  Handles are hashable and compare by
    identity; they are made by the mux, not by you.
    """

    __slots__ = ("__weakref__", "_life", "_tx")

    def __init__(self, life: StreamLife) -> None:
        self._life = life
        self._tx = life.tx  # tx_queued_bytes is read by policies at each pick

    @property
    def stream(self) -> trio.abc.Stream:
        """The attached :class:`trio.abc.Stream`."""
        return self._life.transport

    @property
    def state(self) -> StreamState:
        """``"active"``, ``"failed"`` or ``"unattached"`` (a :class:`StreamState`)."""
        return PUBLIC[self._life.phase]

    @property
    def index(self) -> int:
        """Its number in the mux (lowest free when attached), as ``psock-N`` in /proc."""
        return self._life.index

    @property
    def parser(self) -> Parser:
        """The parser that delineates messages read from this stream."""
        return self._life.parser

    @property
    def unread_data(self) -> bytes:
        """Bytes read from the stream but not part of a complete message.

        Set by :meth:`Mux.unattach`: the start of a message that had not fully
        arrived.  The stream hands back everything after them, so
        ``unread_data`` followed by what the stream yields next is exactly what
        the peer sent after the last delivered message: attach it again with
        ``mux.attach(stream, unread_data=handle.unread_data)``.  Empty before
        unattach and for a stream that failed (the discarded bytes are then in
        :attr:`StreamError.partial_bytes`).
        """
        return self._life.unread

    @property
    def stalled(self) -> bool:
        """Whether its write is stalled (see ``tx_stall_timeout`` in :func:`open_mux`)."""
        return self._life.phase is Phase.STALLED

    @property
    def tx_queued_bytes(self) -> int:
        """Bytes queued on this stream and not written yet (cheap; for policies)."""
        return self._tx.queued_bytes

    def tcp_info(self) -> TCPInfo | None:
        """Read the kernel's ``TCP_INFO`` for the TCP connection under this stream.

        Works for a :class:`trio.SocketStream` over TCP, and for a stream that
        wraps one through ``transport_stream`` (e.g. :class:`trio.SSLStream`).

        Returns:
          A :class:`TCPInfo` (retransmits, rtt, ...), or ``None`` when there is
          no TCP socket under the stream or it is closed.

        """
        return tcp_info_of(self._life.transport)

    def statistics(self) -> StreamStatistics:
        """Return a snapshot of this stream's counters."""
        life = self._life
        tx = life.tx
        rx = life.rx
        asm = rx.assembler
        return StreamStatistics(
            rx_msgs=asm.msgs,
            rx_bytes=asm.bytes,
            tx_msgs=tx.msgs,
            tx_bytes=tx.bytes,
            reserved=tx.reserved,
            unreserved=tx.unreserved,
            tx_aborts=tx.aborts,
            rx_need_more_hdr=asm.need_more_hdr,
            rx_bad_hdr_len=asm.bad_hdr_len,
            rx_msg_too_big=asm.msg_too_big,
            rx_msg_timeouts=rx.timeouts,
            rx_paused=rx.paused_seconds(),
            tx_queued_msgs=tx.queued_msgs,
            tx_queued_bytes=tx.queued_bytes,
            state=PUBLIC[life.phase],
            reserved_by=tuple(sorted(owner.sock.index for owner in tx.owners)),
            reading_paused=rx.paused_since is not None,
            rx_ready_msgs=len(rx.held),
            stalled=life.phase is Phase.STALLED,
        )

    def __repr__(self) -> str:
        life = self._life
        return f"<AttachedStream psock-{life.index} {PUBLIC[life.phase].value} {life.transport!r}>"
