"""KCM sockets: the message endpoints of a mux."""

from __future__ import annotations

import enum
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, TypeVar, final

import trio

from ._stats import SocketStatistics

if TYPE_CHECKING:
    from ._mux import Mux, _SendWaiter
    from ._stream import AttachedStream

__all__ = ["KCMSocket", "SocketType"]

T = TypeVar("T")


class SocketType(enum.Enum):
    """The kind of KCM socket, as in ``socket(AF_KCM, type, 0)``."""

    #: Whole messages in and out (the default).
    DGRAM = "dgram"
    #: The kernel's SEQPACKET lets a message be built over several sends and read
    #: in pieces.  Not yet: for now a SEQPACKET mux behaves exactly as ``DGRAM``.
    SEQPACKET = "seqpacket"


class _Batch:
    __slots__ = ("messages", "nbytes")

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.nbytes = 0


@final
class KCMSocket:
    """A message endpoint on a mux, made by :meth:`Mux.socket` or :meth:`clone`.

    It works like a :class:`trio.abc.Channel` of :class:`bytes`:
    :meth:`send` hands a whole message to the mux, :meth:`receive` returns a
    whole message, and it supports ``async for``.  Any number of tasks may use
    one socket at once.

    Each socket has two bounded buffers: messages accepted and not written yet
    (``send_buffer_size`` bytes: :meth:`send` waits while it is full) and
    messages received and not taken yet (``receive_buffer_size`` bytes: while
    it is full the socket gets no more).  In both, a message is accepted while
    the buffer is below its size, so a message larger than the buffer still
    goes through an empty one.

    Every method raises :exc:`trio.ClosedResourceError` once the socket was
    closed with :meth:`aclose`, or its mux was closed.
    """

    __slots__ = (
        "__weakref__",
        "_batches",
        "_closed",
        "_index",
        "_mux",
        "_receive_enabled",
        "_rx_bytes",
        "_rx_candidate",
        "_rx_limit",
        "_rx_msgs",
        "_rx_queue",
        "_rx_queued_bytes",
        "_rx_waiters",
        "_tx_bytes",
        "_tx_limit",
        "_tx_msgs",
        "_tx_queue",
        "_tx_queued_bytes",
        "_tx_queued_msgs",
        "_tx_waiters",
    )

    def __init__(
        self, mux: Mux, index: int, receive_buffer_size: int, send_buffer_size: int
    ) -> None:
        self._mux = mux
        self._index = index
        self._closed = False
        self._receive_enabled = True
        # receive
        self._rx_candidate = False
        self._rx_limit = receive_buffer_size
        self._rx_queue: deque[tuple[bytes, AttachedStream]] = deque()
        self._rx_queued_bytes = 0
        self._rx_waiters: deque[trio.lowlevel.Task] = deque()
        # transmit
        self._tx_limit = send_buffer_size
        self._tx_queue: deque = deque()  # type: ignore[type-arg]  # TxGroups waiting for a stream
        self._tx_queued_bytes = 0
        self._tx_queued_msgs = 0
        self._tx_waiters: OrderedDict[trio.lowlevel.Task, _SendWaiter] = OrderedDict()
        self._batches: dict[trio.lowlevel.Task, _Batch] = {}
        # counters
        self._rx_msgs = 0
        self._rx_bytes = 0
        self._tx_msgs = 0
        self._tx_bytes = 0

    # -- identity -------------------------------------------------------------

    @property
    def mux(self) -> Mux:
        """The mux this socket belongs to."""
        return self._mux

    @property
    def index(self) -> int:
        """Its number in the mux (lowest free when made), as ``kcm-N`` in /proc."""
        return self._index

    @property
    def receive_buffer_size(self) -> int:
        """The receive buffer's size in bytes."""
        return self._rx_limit

    @property
    def send_buffer_size(self) -> int:
        """The send buffer's size in bytes."""
        return self._tx_limit

    @property
    def rx_queued_bytes(self) -> int:
        """Bytes waiting in the receive queue (cheap; for policies)."""
        return self._rx_queued_bytes

    @property
    def receive_enabled(self) -> bool:
        """Whether this socket takes new messages (see :meth:`disable_receive`)."""
        return self._receive_enabled

    def clone(self) -> KCMSocket:
        """Open another socket on the same mux, with the same buffer sizes.

        The kernel's ``SIOCKCMCLONE``.  The new socket is independent: closing
        one does not close the other.

        Raises:
          trio.ClosedResourceError: This socket or the mux is closed.

        """
        if self._closed:
            raise trio.ClosedResourceError("the KCM socket is closed")
        return self._mux.socket(receive_buffer_size=self._rx_limit, send_buffer_size=self._tx_limit)

    # -- sending --------------------------------------------------------------

    def send_nowait(self, message: bytes) -> None:
        """Hand ``message`` to the mux, or raise :exc:`trio.WouldBlock`.

        Raises:
          trio.WouldBlock: The send buffer is full (or other senders wait).
          BadMessage: The mux's parser does not accept ``message``.
          OSError: ``EMSGSIZE``: ``message`` is above ``max_message_size``.
          ValueError: ``message`` is empty.
          trio.ClosedResourceError: The socket or mux is closed.

        """
        message = self._mux._prepare(message)
        if not self._mux._try_send(self, [message], len(message)):
            raise trio.WouldBlock

    async def send(self, message: bytes) -> None:
        """Hand one whole message to the mux; wait while the send buffer is full.

        It returns once the message is accepted, like ``sendmsg`` returning
        once the data is in the socket buffer: it is then written whole on one
        stream, never interleaved with another message, in the order this
        socket's messages were accepted (across streams the peer may see them
        reordered).  With no stream attached it waits in the buffer.  If this
        call is cancelled before it returns, the message was not accepted and
        is never sent.

        Inside :meth:`batch`, the message is held until the batch ends.

        Args:
          message: The message, header included; any bytes-like object (it is
            copied unless it is :class:`bytes`).  It may also be a "super
            message": several complete messages joined.

        Raises:
          BadMessage: The mux's parser does not accept ``message`` as one or
            more complete messages (checked before anything is written).
          OSError: ``EMSGSIZE``: ``message`` is above ``max_message_size``.
          ValueError: ``message`` is empty (KCM cannot send an empty message).
          trio.ClosedResourceError: The socket or mux is closed.

        """
        message = self._mux._prepare(message)
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._mux._try_send(self, [message], len(message)):
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        await self._mux._wait_send(self, [message], len(message))

    def send_many_nowait(self, messages: Iterable[bytes]) -> None:
        """:meth:`send_many`, or :exc:`trio.WouldBlock` if the buffer is full."""
        batch, nbytes = self._mux._prepare_many(messages)
        if not batch:
            if self._closed:
                raise trio.ClosedResourceError("the KCM socket is closed")
            return
        if not self._mux._try_send(self, batch, nbytes):
            raise trio.WouldBlock

    async def send_many(self, messages: Iterable[bytes]) -> None:
        """Hand several messages to the mux as one group (``sendmmsg``).

        They are all checked first, then accepted together (all or none), and
        go out on one stream, in one write where possible.  An empty iterable
        is a checkpoint and nothing else (on an open socket).

        Raises:
          The same as :meth:`send`, for any of the messages.

        """
        batch, nbytes = self._mux._prepare_many(messages)
        await trio.lowlevel.checkpoint_if_cancelled()
        if not batch and self._closed:
            raise trio.ClosedResourceError("the KCM socket is closed")
        if not batch or self._mux._try_send(self, batch, nbytes):
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        await self._mux._wait_send(self, batch, nbytes)

    @asynccontextmanager
    async def batch(self) -> AsyncIterator[None]:
        """Group this task's sends on this socket (the kernel's ``MSG_BATCH``).

        Messages that this task sends on this socket inside the block are
        accepted as usual, but held, and handed to one stream together when the
        block ends -- also when it ends with an exception, since they were
        accepted.  If the send buffer fills inside the block, what was gathered
        so far goes out first (the kernel flushes a pending batch before it
        waits for memory).  Other tasks' sends are not affected.

        Raises:
          RuntimeError: This task is already inside a batch on this socket.
          trio.ClosedResourceError: The socket or mux is closed.

        """
        if self._closed:
            raise trio.ClosedResourceError("the KCM socket is closed")
        task = trio.lowlevel.current_task()
        if task in self._batches:
            raise RuntimeError("batch() blocks cannot nest on one socket")
        batch = self._batches[task] = _Batch()
        try:
            yield
        finally:
            if self._batches.pop(task, None) is batch:
                self._mux._flush_batch(self, batch)
        await trio.lowlevel.checkpoint()

    # -- receiving ------------------------------------------------------------

    def receive_nowait(self) -> bytes:
        """Take one queued message, or raise :exc:`trio.WouldBlock`.

        Raises:
          trio.WouldBlock: Nothing is queued.
          trio.ClosedResourceError: The socket or mux is closed.

        """
        if self._closed:
            raise trio.ClosedResourceError("the KCM socket is closed")
        if not self._rx_queue:
            raise trio.WouldBlock
        return self._mux._take(self, 1)[0]

    async def receive(self) -> bytes:
        """Wait for and return one whole message (header included).

        Messages are spread over a mux's sockets by its receive policy.  A
        socket has no end of stream: with no stream attached, this waits.

        Raises:
          trio.ClosedResourceError: The socket or mux is closed (also while
            waiting).

        """
        return (await self._receive(1, self._mux._take))[0]

    def receive_many_nowait(self, max_messages: int) -> list[bytes]:
        """Take up to ``max_messages`` queued messages, or raise :exc:`trio.WouldBlock`."""
        if max_messages < 1:
            raise ValueError("max_messages must be >= 1")
        if self._closed:
            raise trio.ClosedResourceError("the KCM socket is closed")
        if not self._rx_queue:
            raise trio.WouldBlock
        return self._mux._take(self, max_messages)

    async def receive_many(self, max_messages: int) -> list[bytes]:
        """Wait for messages; return all that are queued, up to ``max_messages``.

        The kernel's ``recvmmsg``: it waits only for the first message, then
        takes whatever else is already queued, without waiting per message.

        Raises:
          ValueError: ``max_messages`` is below 1.
          trio.ClosedResourceError: The socket or mux is closed.

        """
        if max_messages < 1:
            raise ValueError("max_messages must be >= 1")
        return await self._receive(max_messages, self._mux._take)

    async def _receive(self, max_messages: int, take: Callable[[KCMSocket, int], T]) -> T:
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._closed:
            raise trio.ClosedResourceError("the KCM socket is closed")
        if self._rx_queue:
            messages = take(self, max_messages)
            await trio.lowlevel.cancel_shielded_checkpoint()
            return messages
        task = trio.lowlevel.current_task()
        waiters = self._rx_waiters
        waiters.append(task)
        while True:

            def abort(_: object) -> trio.lowlevel.Abort:
                waiters.remove(task)
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
            if self._closed:
                raise trio.ClosedResourceError("the KCM socket is closed")
            if self._rx_queue:
                return take(self, max_messages)
            # Another task took it first, or it moved away: wait at the head.
            waiters.appendleft(task)

    # -- origin and pinned replies (recvfrom / sendto) --------------------------

    def receive_from_nowait(self) -> tuple[bytes, AttachedStream]:
        """:meth:`receive_from`, or raise :exc:`trio.WouldBlock` if nothing is queued."""
        if self._closed:
            raise trio.ClosedResourceError("the KCM socket is closed")
        if not self._rx_queue:
            raise trio.WouldBlock
        return self._mux._take_from(self, 1)[0]

    async def receive_from(self) -> tuple[bytes, AttachedStream]:
        """Wait for one whole message; return it and the stream it came on.

        Like ``recvfrom``: the :class:`AttachedStream` is the handle
        :meth:`Mux.attach` returned for the stream that carried the message
        (the kernel's KCM cannot tell).  Pass it to :meth:`send_to` to answer
        on the same connection.  It is the same message :meth:`receive`
        would have returned; the handle may have failed or been unattached
        since.

        Raises:
          trio.ClosedResourceError: The socket or mux is closed.

        """
        return (await self._receive(1, self._mux._take_from))[0]

    def receive_many_from_nowait(self, max_messages: int) -> list[tuple[bytes, AttachedStream]]:
        """:meth:`receive_many_from`, or raise :exc:`trio.WouldBlock` if nothing is queued."""
        if max_messages < 1:
            raise ValueError("max_messages must be >= 1")
        if self._closed:
            raise trio.ClosedResourceError("the KCM socket is closed")
        if not self._rx_queue:
            raise trio.WouldBlock
        return self._mux._take_from(self, max_messages)

    async def receive_many_from(self, max_messages: int) -> list[tuple[bytes, AttachedStream]]:
        """:meth:`receive_many`, each message with the stream it came on.

        Returns:
          1 to ``max_messages`` ``(message, handle)`` pairs, as
          :meth:`receive_from` returns them.

        Raises:
          ValueError: ``max_messages`` is below 1.
          trio.ClosedResourceError: The socket or mux is closed.

        """
        if max_messages < 1:
            raise ValueError("max_messages must be >= 1")
        return await self._receive(max_messages, self._mux._take_from)

    def send_to_nowait(self, message: bytes, handle: AttachedStream) -> None:
        """:meth:`send_to`, or raise :exc:`trio.WouldBlock` if the send buffer is full."""
        message = self._mux._prepare(message)
        if not self._mux._try_send_to(self, handle, [message], len(message)):
            raise trio.WouldBlock

    async def send_to(self, message: bytes, handle: AttachedStream) -> None:
        """Send one whole message on the stream ``handle``, not where the policy says.

        Like ``sendto``: with the handle :meth:`receive_from` returned, a reply
        goes back on the connection its request came on, so one mux can serve
        many clients.  The transmit policy is bypassed (it neither picks the
        stream nor hears of the message).  Everything else is as for
        :meth:`send`: the message is checked first, written whole and never
        interleaved, counts against this socket's send buffer (this waits
        while it is full, and a cancelled call sent nothing), and messages
        this socket sends to one stream go out in the order they were
        accepted, behind what the policy had already queued there.  It is not
        held by :meth:`batch`, and it does not wait behind messages of this
        socket that no stream was picked for yet.

        A message sent to a stream never moves to another one.  If the stream
        fails before writing it, it is listed in the :class:`StreamError`:
        in :attr:`~StreamError.unsent` if its write had not started, in
        :attr:`~StreamError.in_doubt` if it had (and it is not resent).  If
        the stream is unattached, :meth:`Mux.unattach` writes it first.

        Raises:
          trio.BrokenResourceError: The stream failed (before the message was
            accepted); its :class:`StreamError` is ``__cause__``.
          trio.ClosedResourceError: The stream was unattached (or is being
            unattached), or this socket or the mux is closed.
          ValueError: ``handle`` belongs to another mux.
          BadMessage: The mux's parser does not accept ``message``.
          OSError: ``EMSGSIZE``: ``message`` is above ``max_message_size``.

        """
        message = self._mux._prepare(message)
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._mux._try_send_to(self, handle, [message], len(message)):
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        await self._mux._wait_send(self, [message], len(message), handle)

    def __aiter__(self) -> KCMSocket:
        return self

    async def __anext__(self) -> bytes:
        """Receive the next message; iteration ends when the mux closes."""
        try:
            return await self.receive()
        except trio.ClosedResourceError:
            if self._mux._closed:
                raise StopAsyncIteration from None
            raise

    def disable_receive(self) -> None:
        """Stop taking new messages; move the queued ones to other sockets.

        The kernel's ``KCM_RECV_DISABLE``: a task about to do a long piece of
        work hands its backlog to others.  Messages go to the sockets that can
        take them, or wait in the mux until one can.  The socket can still
        send.  Does nothing if receiving is already disabled.
        """
        if self._closed:
            raise trio.ClosedResourceError("the KCM socket is closed")
        if self._receive_enabled:
            self._mux._disable_receive(self)

    def enable_receive(self) -> None:
        """Take new messages again (undoes :meth:`disable_receive`)."""
        if self._closed:
            raise trio.ClosedResourceError("the KCM socket is closed")
        if not self._receive_enabled:
            self._mux._enable_receive(self)

    async def aclose(self) -> None:
        """Close the socket.  Idempotent.

        Messages queued for it move to other sockets (or wait in the mux until
        one has room).  Messages it already accepted for sending still go out,
        and an open :meth:`batch` of another task is flushed.  Tasks blocked in
        :meth:`send` (not yet accepted) or :meth:`receive` get
        :exc:`trio.ClosedResourceError`.  The mux and its streams go on.
        """
        self._mux._close_socket(self)
        await trio.lowlevel.checkpoint()

    async def __aenter__(self) -> KCMSocket:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def statistics(self) -> SocketStatistics:
        """Return a snapshot of this socket's counters."""
        return SocketStatistics(
            rx_msgs=self._rx_msgs,
            rx_bytes=self._rx_bytes,
            tx_msgs=self._tx_msgs,
            tx_bytes=self._tx_bytes,
            rx_queued_msgs=len(self._rx_queue),
            rx_queued_bytes=self._rx_queued_bytes,
            tx_queued_msgs=self._tx_queued_msgs,
            tx_queued_bytes=self._tx_queued_bytes,
            receive_enabled=self._receive_enabled,
        )

    def __repr__(self) -> str:
        flags = " closed" if self._closed else ("" if self._receive_enabled else " rx-disabled")
        return f"<KCMSocket kcm-{self._index}{flags}>"
