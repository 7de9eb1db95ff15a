"""Statistics snapshots: frozen dataclasses, cheap to take (no locks, no I/O).

Names follow the kernel's ``/proc/net/kcm_stats`` where one exists.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "TOTALLED",
    "MuxStatistics",
    "SocketStatistics",
    "StreamState",
    "StreamStatistics",
    "StreamTotals",
]


class StreamState(str, enum.Enum):
    """The state of an attached stream (:attr:`AttachedStream.state`).

    It is a :class:`str` enum: ``StreamState.ACTIVE == "active"``.
    """

    #: Attached and in use for both directions.  A stream the mux closed
    #: when it closed keeps this state (its statistics are final then).
    ACTIVE = "active"
    #: It failed (see :class:`StreamError`); it stays ``"failed"`` after the
    #: mux or the application unattached or closed it.
    FAILED = "failed"
    #: Handed back by :meth:`Mux.unattach` while it was healthy.
    UNATTACHED = "unattached"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class StreamStatistics:
    """A snapshot of one attached stream's counters (the kernel's psock)."""

    #: Messages assembled from this stream.
    rx_msgs: int
    #: Bytes of those messages.
    rx_bytes: int
    #: Messages written whole to this stream.
    tx_msgs: int
    #: Bytes written to this stream.
    tx_bytes: int
    #: Times a KCM socket started a burst of messages on this stream (it had
    #: nothing queued or in flight here and queued something).
    reserved: int
    #: Times such a burst ended: all of that socket's messages here were written.
    unreserved: int
    #: Writes that failed part-way (at most 1: the stream then failed).
    tx_aborts: int
    #: Times the parser answered "need more bytes".
    rx_need_more_hdr: int
    #: Impossible lengths from the parser (``EPROTO``).
    rx_bad_hdr_len: int
    #: Messages announced above ``max_message_size`` (``EMSGSIZE``).
    rx_msg_too_big: int
    #: Messages that outlasted ``assembly_timeout`` (``ETIMEDOUT``).
    rx_msg_timeouts: int
    #: Seconds the reader spent stopped for backpressure, a pause in progress
    #: included.
    rx_paused: float
    #: Messages queued for this stream and not written yet.
    tx_queued_msgs: int
    #: Bytes queued for this stream and not written yet.
    tx_queued_bytes: int
    #: The stream's state.
    state: StreamState
    #: The indices of the sockets with a burst on this stream: each has
    #: messages queued or in flight here (``Rsvd-N`` in ``format_stats``).
    reserved_by: tuple[int, ...]
    #: Whether its reader is stopped now for backpressure (no socket has room).
    reading_paused: bool
    #: Complete messages read from it that wait for a socket with room.
    rx_ready_msgs: int
    #: Whether its write is stalled (see ``tx_stall_timeout``).
    stalled: bool


@dataclass(frozen=True, slots=True)
class SocketStatistics:
    """A snapshot of one KCM socket's counters."""

    #: Messages the application received from this socket.
    rx_msgs: int
    #: Bytes of those messages.
    rx_bytes: int
    #: Messages the application sent on this socket (counted when accepted).
    tx_msgs: int
    #: Bytes of those messages.
    tx_bytes: int
    #: Messages waiting in this socket's receive queue.
    rx_queued_msgs: int
    #: Bytes waiting in this socket's receive queue.
    rx_queued_bytes: int
    #: Messages accepted from this socket and not written yet.
    tx_queued_msgs: int
    #: Bytes accepted from this socket and not written yet.
    tx_queued_bytes: int
    #: Whether the socket takes new messages (see ``disable_receive``).
    receive_enabled: bool
    #: Whether the receive policy may give it messages now: open, enabled, and
    #: its receive queue below ``receive_buffer_size`` (back below half once
    #: it was full).
    receive_ready: bool
    #: Whether messages it accepted wait for a stream (none attached, or the
    #: transmit policy picked none).
    tx_waiting: bool
    #: Messages accepted inside open ``batch()`` blocks, held until they end.
    tx_batched_msgs: int
    #: Messages withdrawn unwritten because they went stale: older than the
    #: socket's ``time_to_live``, or past their sender's deadline
    #: (``expire_at_deadline``).
    tx_expired: int


@dataclass(frozen=True, slots=True)
class MuxStatistics:
    """A snapshot of a mux's counters, streams that left it included."""

    #: Messages assembled from streams (the kernel's mux RX-Msgs).
    rx_msgs: int
    #: Bytes of those messages.
    rx_bytes: int
    #: Messages written whole to streams.
    tx_msgs: int
    #: Bytes of those messages.
    tx_bytes: int
    #: Messages that were queued or in flight on a stream that failed or was
    #: unattached, and were handed to another stream.
    tx_retries: int
    #: Received messages no socket could ever take (lost when the mux closed).
    rx_ready_drops: int
    #: Accepted messages that could not be written before the mux closed.
    tx_dropped: int
    #: Accepted messages withdrawn unwritten because they went stale (see
    #: :meth:`Mux.socket`'s ``time_to_live`` and ``expire_at_deadline``).
    tx_expired: int
    #: Streams attached, ever.
    psock_attach: int
    #: Streams unattached, ever (explicitly, or by ``auto_close``).
    psock_unattach: int
    #: Streams attached now (failed ones not yet unattached included).
    streams: int
    #: Open KCM sockets.
    sockets: int
    #: Stream failures, ever.
    stream_errors: int
    #: Errors dropped untaken: beyond 1,024 waiting errors of streams that are
    #: no longer attached (closed by ``auto_close``), the oldest go (each was
    #: logged when it happened).
    errors_dropped: int
    #: Events dropped untaken: beyond 1,024 waiting events the oldest go.
    events_dropped: int
    #: Bytes of received data held now, against ``receive_memory_limit``:
    #: partly assembled messages (an admitted large message counts its whole
    #: announced length), and complete ones not taken yet (0 with no limit:
    #: nothing counts them).
    rx_buffered: int
    #: Readers waiting now for room in ``receive_memory_limit``.
    rx_budget_waiting: int
    #: Times a reader had to wait for room in ``receive_memory_limit``.
    rx_budget_holds: int
    #: Streams failed because their message was larger than what
    #: ``receive_memory_limit`` lets messages hold (``ENOBUFS``).
    rx_budget_failures: int


#: The counters of StreamStatistics that StreamTotals adds up.
TOTALLED = (
    "rx_msgs",
    "rx_bytes",
    "tx_msgs",
    "tx_bytes",
    "reserved",
    "unreserved",
    "tx_aborts",
    "rx_need_more_hdr",
    "rx_bad_hdr_len",
    "rx_msg_too_big",
    "rx_msg_timeouts",
)


@dataclass(frozen=True, slots=True)
class StreamTotals:
    """The counters of every stream a mux ever had, added up (the kernel's psock totals).

    What ``/proc/net/kcm_stats`` shows on its ``Psock`` line, for one mux:
    streams attached now and streams that left are both counted.  The first
    eleven fields add up the same fields of :class:`StreamStatistics`.
    """

    #: Messages assembled from streams.
    rx_msgs: int
    #: Bytes of those messages.
    rx_bytes: int
    #: Messages written whole to streams.
    tx_msgs: int
    #: Bytes written to streams.
    tx_bytes: int
    #: Bursts of a KCM socket started on a stream.
    reserved: int
    #: Bursts of a KCM socket finished on a stream.
    unreserved: int
    #: Writes that failed part-way.
    tx_aborts: int
    #: Times a parser answered "need more bytes".
    rx_need_more_hdr: int
    #: Impossible lengths from a parser (EPROTO).
    rx_bad_hdr_len: int
    #: Messages announced above max_message_size (EMSGSIZE).
    rx_msg_too_big: int
    #: Messages that outlasted assembly_timeout (ETIMEDOUT).
    rx_msg_timeouts: int
    #: Streams whose reader failed them (the peer's end of file included).
    rx_aborts: int
    #: Streams failed by their parser or its limits: a rejected header,
    #: an impossible or too large length, a timeout (the kernel's RX-Intr).
    rx_interrupted: int
    #: Streams that failed with part of a message received (RX-Unrecov).
    rx_unrecoverable: int
    #: Streams unattached while a KCM socket had a burst on them
    #: (the kernel's ``psock_unattach_rsvd``).
    unattached_reserved: int
