"""The transmit side's records: send buffers, stream queues, groups, waiters.

Plain records with plain names, owned by the transmit scheduler
(``_transmit.py``), which alone changes them; a socket and a stream handle
hold theirs and only read it.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, NamedTuple, final

import trio

from ._stream import plain_socket

if TYPE_CHECKING:
    from ._socket import KCMSocket
    from ._stream import StreamLife

__all__ = [
    "GONE",
    "NEVER",
    "WRITE_COALESCE",
    "Aborted",
    "Batch",
    "Expiring",
    "ExpiringPinnedTxGroup",
    "ExpiringTxGroup",
    "Flush",
    "PinnedTxGroup",
    "SendWaiter",
    "SocketTx",
    "StreamTx",
    "TxGroup",
    "collect",
    "split_pinned",
]

#: The writer joins queued groups into one write up to about this many bytes.
WRITE_COALESCE = 256 * 1024

#: A deadline that never comes (no time-to-live, no deadline).
NEVER = math.inf
#: ``expires`` of a stale-able group once it was written, given up or
#: withdrawn: nothing to withdraw any more.
GONE = -math.inf


class Batch:
    """The messages a task's ``batch()`` block gathered on a socket."""

    __slots__ = ("messages", "nbytes")

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.nbytes = 0


class TxGroup:
    """Messages of one socket that go out together, on one stream."""

    __slots__ = ("messages", "nbytes", "picked_at", "sock")

    #: Sent with ``send_to``: bound to its stream, unknown to the policy.
    pinned = False

    def __init__(self, sock: SocketTx, messages: list[bytes], nbytes: int) -> None:
        self.sock = sock
        self.messages = messages
        self.nbytes = nbytes
        self.picked_at = 0.0


class PinnedTxGroup(TxGroup):
    """A group from ``send_to``: it never moves to another stream."""

    __slots__ = ()

    pinned = True


class ExpiringTxGroup(TxGroup):
    """A group that goes stale unwritten at ``expires`` (see ``_expiry.py``)."""

    __slots__ = ("expires",)

    def __init__(self, sock: SocketTx, messages: list[bytes], nbytes: int, expires: float) -> None:
        super().__init__(sock, messages, nbytes)
        #: When it goes stale (trio time), or GONE.
        self.expires = expires


class ExpiringPinnedTxGroup(PinnedTxGroup):
    """A ``send_to`` group that goes stale unwritten at ``expires``."""

    __slots__ = ("expires",)

    def __init__(self, sock: SocketTx, messages: list[bytes], nbytes: int, expires: float) -> None:
        super().__init__(sock, messages, nbytes)
        #: When it goes stale (trio time), or GONE.
        self.expires = expires


#: The groups that go stale: an expiring socket's, with a finite time.
Expiring = (ExpiringTxGroup, ExpiringPinnedTxGroup)


class Flush:
    """A task waiting until the groups its socket had accepted are written or given up."""

    __slots__ = ("batches", "closed", "done", "groups")

    def __init__(self, groups: dict[TxGroup, None], batches: set[Batch]) -> None:
        self.groups = groups
        #: Other tasks' open batch() blocks, whose messages become a group later.
        self.batches = batches
        self.closed = False
        self.done = trio.Event()

    def resolved(self, group: TxGroup) -> None:
        """``group`` was written, or given up."""
        if self.groups.pop(group, 0) is None:
            self._check()

    def batch_flushed(self, batch: Batch, group: TxGroup | None) -> None:
        """``batch`` handed its messages to the mux as ``group`` (None: it had none)."""
        if batch in self.batches:
            self.batches.discard(batch)
            if group is not None:
                self.groups[group] = None
            self._check()

    def _check(self) -> None:
        if not self.groups and not self.batches:
            self.done.set()


class SendWaiter:
    __slots__ = ("batch", "deadline", "messages", "nbytes", "target")

    def __init__(
        self,
        messages: list[bytes],
        nbytes: int,
        batch: Batch | None,
        target: StreamTx | None,
        deadline: float,
    ) -> None:
        self.messages = messages
        self.nbytes = nbytes
        self.batch = batch
        self.target = target  # send_to: the stream it must go on
        #: The sender's deadline, if its socket withdraws messages at it.
        self.deadline = deadline


@final
class SocketTx:
    """One socket's transmit side: its send buffer and its line of senders."""

    __slots__ = (
        "at_deadline",
        "batches",
        "bytes",
        "expired",
        "expiring",
        "flushes",
        "limit",
        "msgs",
        "queue",
        "queued_bytes",
        "queued_msgs",
        "sock",
        "ttl",
        "waiters",
    )

    def __init__(
        self, sock: KCMSocket, limit: int, ttl: float | None = None, at_deadline: bool = False
    ) -> None:
        self.sock = sock
        self.limit = limit
        #: Seconds an accepted message may wait unwritten (None: forever).
        self.ttl = ttl
        #: Whether a message also goes stale at its sender's deadline.
        self.at_deadline = at_deadline
        self.expiring = ttl is not None or at_deadline
        #: Messages withdrawn unwritten because they went stale.
        self.expired = 0
        #: Groups that wait for a stream, in the order they were accepted.
        self.queue: deque[TxGroup] = deque()
        #: Accepted and not written (or given up): what fills the buffer.
        self.queued_bytes = 0
        self.queued_msgs = 0
        self.waiters: OrderedDict[trio.lowlevel.Task, SendWaiter] = OrderedDict()
        self.batches: dict[trio.lowlevel.Task, Batch] = {}
        #: Tasks in KCMSocket.flush(), each with what it waits for.
        self.flushes: list[Flush] = []
        self.msgs = 0
        self.bytes = 0


def _eager_sender(
    sock: trio.socket.SocketType | None,
) -> Callable[[bytes | memoryview], int] | None:
    """A non-blocking write on a plain :class:`trio.SocketStream`'s socket, else ``None``.

    Trio keeps its sockets non-blocking, so a write the kernel can take at
    once needs no wait.  The file descriptor is asked for at each write: once
    the socket is closed it is ``-1``, never a number reused by something else.
    """
    if sock is None:
        return None

    def send(data: bytes | memoryview) -> int:
        return os.write(sock.fileno(), data)  # -1 once closed: EBADF

    return send


@final
class StreamTx:
    """One stream's transmit side: its queue, the write in flight, its counters."""

    __slots__ = (
        "aborts",
        "bytes",
        "eager_send",
        "inflight",
        "life",
        "lot",
        "msgs",
        "owners",
        "pending",
        "plain",
        "queued_bytes",
        "queued_msgs",
        "reserved",
        "rest",
        "unreserved",
        "window",
    )

    def __init__(self, life: StreamLife) -> None:
        self.life = life
        self.pending: deque[TxGroup] = deque()
        self.queued_bytes = 0
        self.queued_msgs = 0
        #: The groups of the write in progress (the same list object while it
        #: lasts: the stall watchdog compares it), or None.
        self.inflight: list[TxGroup] | None = None
        #: What is left of a write the sending task began, and its size.
        self.rest: tuple[memoryview, int] | None = None
        #: The trio socket of a plain SocketStream (its writer waits on it).
        self.plain = plain_socket(life.transport)
        self.eager_send = _eager_sender(self.plain)
        #: The sending task wrote to it itself and has not yet passed its
        #: schedule point (:meth:`Transmitter.yield_turn`).
        self.window = False
        #: Sockets with groups queued or in flight here (policy-picked), and
        #: how many: a socket's *burst* on this stream.
        self.owners: dict[SocketTx, int] = {}
        self.lot = trio.lowlevel.ParkingLot()  # the idle writer parks here
        self.msgs = 0
        self.bytes = 0
        self.reserved = 0
        self.unreserved = 0
        self.aborts = 0


class Aborted(NamedTuple):
    """What a failed stream's transmit side leaves (see :meth:`Transmitter.abort`)."""

    in_doubt: tuple[bytes, ...]  # its write in progress
    unsent: tuple[bytes, ...]  # sent to it with send_to, not started
    retry: list[TxGroup]  # not started: for other streams
    inflight: list[TxGroup]  # in doubt, the policy's: retried or given up
    lost: list[TxGroup]  # send_to groups: given up


def collect(pending: deque[TxGroup]) -> tuple[list[TxGroup], int, bytes]:
    """Take the next write off a stream's queue: whole groups, up to ~WRITE_COALESCE."""
    group = pending.popleft()
    groups = [group]
    size = group.nbytes
    while pending and size < WRITE_COALESCE:
        group = pending.popleft()
        groups.append(group)
        size += group.nbytes
    if len(groups) == 1 and len(groups[0].messages) == 1:
        data = groups[0].messages[0]
    else:
        data = b"".join([m for g in groups for m in g.messages])
    return groups, size, data


def split_pinned(groups: Iterable[TxGroup]) -> tuple[list[TxGroup], list[TxGroup]]:
    """``groups`` as (the policy's, those sent to their stream with ``send_to``)."""
    groups = list(groups)
    plain = [g for g in groups if not g.pinned]
    return plain, ([g for g in groups if g.pinned] if len(plain) < len(groups) else [])
