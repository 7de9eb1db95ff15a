"""KCM sockets: the message endpoints of a mux."""

from __future__ import annotations

import enum
import errno as _errno
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, TypeVar, final

import trio

from ._outgoing import OutgoingCheck
from ._receive import Receiver, SocketRx
from ._seqpacket import Building, Reading
from ._stats import SocketStatistics
from ._stream import life_of
from ._transmit import Transmitter
from ._txstate import Batch

if TYPE_CHECKING:
    from ._mux import Mux
    from ._stream import AttachedStream

__all__ = ["KCMSocket", "SocketType", "close_socket"]

T = TypeVar("T")


class SocketType(enum.Enum):
    """The kind of KCM socket, as in ``socket(AF_KCM, type, 0)``."""

    #: Whole messages in and out (the default): ``send(part, more=True)`` and
    #: ``receive_some()`` raise ``OSError(EOPNOTSUPP)``.
    DGRAM = "dgram"
    #: As ``DGRAM``, and also: a message can be built over several
    #: ``send(part, more=True)`` calls (the kernel's SEQPACKET without
    #: ``MSG_EOR``), and read in pieces with ``receive_some(max_bytes)``.
    SEQPACKET = "seqpacket"


def _not_seqpacket(what: str) -> OSError:
    return OSError(
        _errno.EOPNOTSUPP, f"{what} needs a SEQPACKET socket (a DGRAM socket keeps messages whole)"
    )


def _check_max_messages(max_messages: int) -> None:
    if max_messages < 1:
        raise ValueError("max_messages must be >= 1")


@final
class KCMSocket:
    """A message endpoint on a mux, made by :meth:`Mux.socket` or :meth:`clone`.

    It works like a :class:`trio.abc.Channel` of :class:`bytes`:
    :meth:`send` hands a whole message to the mux, :meth:`receive` returns a
    whole message, and it supports ``async for``.  Any number of tasks may use
    one socket at once.

    Each socket has two bounded buffers: messages accepted and not written yet
    (``send_buffer_size`` bytes: :meth:`send` waits while it is full) and
    messages received and not taken yet (``receive_buffer_size`` bytes: once
    it is full the socket gets no more until it is down to half, so a reader
    that paused for room is not woken for every message taken).  In both, a
    message is accepted while the buffer is below its size, so a message
    larger than the buffer still goes through an empty one.

    Every method raises :exc:`trio.ClosedResourceError` once the socket was
    closed with :meth:`aclose`, or its mux was closed.

    **Checkpoints.**  Every async method is a cancel point: cancelled before
    it returns, it did nothing (a send accepted nothing, a receive took
    nothing).  A call that waits yields to other tasks, as in any Trio API.
    A send or receive that completes *without* waiting yields too, unless
    this mux's sockets yielded less than 0.5 ms ago and fewer than 64
    such calls ago (Trio issue #1757's idea, applied to the mux): so a task
    sending or receiving in a loop gives other tasks their turn at least
    every 64 calls and every 0.5 ms of its own running, and pays the
    scheduler once per run of calls instead of once per message.  Messages
    a run sends are accepted when each call returns and written together
    when the task next yields (the first of the run at once, when its
    stream is idle).  :func:`trio.testing.assert_checkpoints` around a
    single call may therefore see no schedule point.
    """

    __slots__ = (
        "__weakref__",
        "_building",
        "_check",
        "_closed",
        "_forget",
        "_index",
        "_max_message_size",
        "_mux",
        "_reading",
        "_receiver",
        "_rx",
        "_seqpacket",
        "_transmitter",
        "_turns",
        "_tx",
    )

    def __init__(
        self,
        mux: Mux,
        index: int,
        *,
        transmit: Transmitter,
        receive: Receiver,
        check: OutgoingCheck,
        socket_type: SocketType,
        receive_buffer_size: int,
        send_buffer_size: int,
        forget: Callable[[KCMSocket], None],
        time_to_live: float | None = None,
        expire_at_deadline: bool = False,
    ) -> None:
        self._mux = mux
        self._index = index
        self._closed = False
        self._transmitter = transmit
        self._turns = transmit.turns  # which calls skip their schedule point
        self._receiver = receive
        self._check = check
        self._seqpacket = socket_type is SocketType.SEQPACKET
        self._max_message_size = check.max_message_size
        self._forget = forget  # the mux's registry forgets a closed socket
        # The two sides, owned by the schedulers: this socket only reads them
        # and hands them back to the scheduler's methods.
        self._tx = transmit.open_socket(self, send_buffer_size, time_to_live, expire_at_deadline)
        self._rx: SocketRx = receive.open_socket(self, receive_buffer_size)
        # SEQPACKET, per task, made on first use: messages being built, and
        # the unread rest of messages being read in pieces.
        self._building: Building | None = None
        self._reading: Reading | None = None
        # Last: the receive policy hears of it, and may read it.
        receive.add_socket(self._rx)

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
        return self._rx.limit

    @property
    def send_buffer_size(self) -> int:
        """The send buffer's size in bytes."""
        return self._tx.limit

    @property
    def time_to_live(self) -> float | None:
        """Seconds a message it accepted may wait unwritten; None: no limit.

        See :meth:`Mux.socket`.
        """
        return self._tx.ttl

    @property
    def expire_at_deadline(self) -> bool:
        """Whether a message it accepted is withdrawn, unwritten, at its sender's deadline."""
        return self._tx.at_deadline

    @property
    def rx_queued_bytes(self) -> int:
        """Bytes waiting in the receive queue (cheap; for policies)."""
        return self._rx.queued_bytes

    @property
    def receive_enabled(self) -> bool:
        """Whether this socket takes new messages (see :meth:`disable_receive`)."""
        return self._rx.enabled

    def clone(self) -> KCMSocket:
        """Open another socket on the same mux, with the same buffer sizes and expiry.

        The kernel's ``SIOCKCMCLONE``.  The new socket is independent: closing
        one does not close the other.

        Raises:
          trio.ClosedResourceError: This socket or the mux is closed.

        """
        if self._closed:
            raise trio.ClosedResourceError("the KCM socket is closed")
        return self._mux.socket(
            receive_buffer_size=self._rx.limit,
            send_buffer_size=self._tx.limit,
            time_to_live=self._tx.ttl,
            expire_at_deadline=self._tx.at_deadline,
        )

    # -- sending --------------------------------------------------------------

    def send_nowait(self, message: bytes, *, more: bool = False) -> None:
        """Hand ``message`` to the mux, or raise :exc:`trio.WouldBlock`.

        With ``more=True`` (SEQPACKET) the part is kept, as by :meth:`send`,
        and this never raises :exc:`trio.WouldBlock`.  A message completed here
        that does not fit raises :exc:`trio.WouldBlock` and is dropped, parts
        and all.

        Raises:
          trio.WouldBlock: The send buffer is full (or other senders wait).
          BadMessage: The mux's parser does not accept ``message``.
          OSError: ``EMSGSIZE``: ``message`` is above ``max_message_size``;
            ``EOPNOTSUPP``: ``more=True`` on a DGRAM socket.
          ValueError: ``message`` is empty.
          trio.ClosedResourceError: The socket or mux is closed.

        """
        if more or self._building is not None:
            if more:
                self._add_part(message)
                return
            assert self._building is not None
            message = self._building.take(message)
        message = self._check.prepare(message)
        if self._closed:
            raise trio.ClosedResourceError("the KCM socket is closed")
        if not self._transmitter.try_send(self._tx, [message], len(message)):
            raise trio.WouldBlock

    async def send(self, message: bytes, *, more: bool = False) -> None:
        """Hand one whole message to the mux; wait while the send buffer is full.

        It returns once the message is accepted, like ``sendmsg`` returning
        once the data is in the socket buffer: it is then written whole on one
        stream, never interleaved with another message, in the order this
        socket's messages were accepted (across streams the peer may see them
        reordered).  With no stream attached it waits in the buffer.  If this
        call is cancelled before it returns, the message was not accepted and
        is never sent.

        Inside :meth:`batch`, the message is held until the batch ends.

        On a SEQPACKET socket, ``more=True`` makes ``message`` the first or
        next *part* of a message that this task is building: it is kept, not
        sent, and this returns at once.  The call without ``more`` adds the
        last part and sends the whole as one message, checked and written
        atomically like any other.  Each task builds its own message, so tasks
        sharing a socket do not mix their parts.  A message whose building is
        abandoned is never sent, not a byte of it: when one of its ``send``
        calls is cancelled or raises, when the socket closes, when the task
        ends, or on :meth:`abandon_message`.

        Args:
          message: The message, header included; any bytes-like object (it is
            copied unless it is :class:`bytes`).  It may also be a "super
            message": several complete messages joined.
          more: SEQPACKET only: this is not the last part of the message.

        Raises:
          BadMessage: The mux's parser does not accept ``message`` as one or
            more complete messages (checked before anything is written).
          OSError: ``EMSGSIZE``: ``message`` (or the message built so far) is
            above ``max_message_size``; ``EOPNOTSUPP``: ``more=True`` on a
            DGRAM socket.
          ValueError: ``message`` is empty (KCM cannot send an empty message).
          trio.ClosedResourceError: The socket or mux is closed.

        """
        if more or self._building is not None:
            if more:
                await self._send_part(message)
                return
            assert self._building is not None
            message = self._building.take(message)
        message = self._check.prepare(message)
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._closed:
            raise trio.ClosedResourceError("the KCM socket is closed")
        tx = self._tx
        transmit = self._transmitter
        batch = tx.batches.get(trio.lowlevel.current_task()) if tx.batches else None
        if batch is not None:
            # Held by this task's batch: a cancel point, not a schedule point.
            if not (tx.waiters or tx.queued_bytes >= tx.limit):
                # The body of the batch's loop: one call, no list.
                transmit.hold(tx, batch, message)
            elif transmit.send_now(tx, [message], len(message)):
                transmit.close_windows()
            else:
                await transmit.wait_send(tx, [message], len(message))
            return
        if transmit.send_now(tx, [message], len(message)):
            if not self._turns.skip():
                await transmit.yield_turn()
            return
        await transmit.wait_send(tx, [message], len(message))

    def _in_batch(self) -> bool:
        # A send held by this task's batch is a cancel point but not a schedule
        # point: the batch's end is (see batch()).
        batches = self._tx.batches
        return bool(batches) and trio.lowlevel.current_task() in batches

    async def _send_part(self, part: bytes) -> None:
        self._add_part(part)
        try:
            await trio.lowlevel.checkpoint()
        except BaseException:
            self.abandon_message()
            raise

    def _add_part(self, part: bytes) -> None:
        if not self._seqpacket:
            raise _not_seqpacket("send(..., more=True)")
        if self._closed:
            raise trio.ClosedResourceError("the KCM socket is closed")
        if self._building is None:
            self._building = Building(self._max_message_size)
        self._building.add(part)

    def abandon_message(self) -> None:
        """Forget this task's unfinished SEQPACKET messages.

        The message it is building with ``send(part, more=True)`` is dropped:
        nothing of it is sent.  The rest of a message it is reading with
        :meth:`receive_some` is dropped too: its next :meth:`receive_some`
        starts a new message.  Use it when the task gives up half-way for a
        reason of its own (a failed ``send`` or ``receive_some`` does it for
        you).  Does nothing if there is nothing to forget.
        """
        task = trio.lowlevel.current_task()
        if self._building is not None:
            self._building.abandon(task)
        if self._reading is not None:
            self._reading.abandon(task)

    def send_many_nowait(self, messages: Iterable[bytes]) -> None:
        """:meth:`send_many`, or :exc:`trio.WouldBlock` if the buffer is full."""
        batch, nbytes = self._check.prepare_many(messages)
        if self._closed:
            raise trio.ClosedResourceError("the KCM socket is closed")
        if batch and not self._transmitter.try_send(self._tx, batch, nbytes):
            raise trio.WouldBlock

    async def send_many(self, messages: Iterable[bytes]) -> None:
        """Hand several messages to the mux as one group (``sendmmsg``).

        They are all checked first, then accepted together (all or none), and
        go out on one stream, in one write where possible.  An empty iterable
        sends nothing (on an open socket).

        Raises:
          The same as :meth:`send`, for any of the messages.

        """
        batch, nbytes = self._check.prepare_many(messages)
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._closed:
            raise trio.ClosedResourceError("the KCM socket is closed")
        transmit = self._transmitter
        if not batch or transmit.send_now(self._tx, batch, nbytes):
            if self._in_batch():
                transmit.close_windows()
            elif not self._turns.skip():
                await transmit.yield_turn()
            return
        await transmit.wait_send(self._tx, batch, nbytes)

    async def flush(self) -> None:
        """Wait until what this socket accepted so far was written, or given up.

        It returns once every message this socket accepted before the call
        (by any task) was written whole to a stream, or will not be: given
        up when a stream failed (reported in a :class:`StreamError`'s
        ``in_doubt`` or ``unsent``, as usual).  Messages accepted after the
        call do not hold it up.  A :meth:`batch` block of this task goes out
        first (its messages were accepted); an open block of another task is
        waited for.  With nothing outstanding it returns at once.  Cancelled,
        it stops waiting; the messages are not affected.

        Raises:
          trio.ClosedResourceError: The socket or mux is closed, before or
            while this waits (what was accepted still goes out, as
            :meth:`aclose` says).

        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._closed:
            raise trio.ClosedResourceError("the KCM socket is closed")
        transmit = self._transmitter
        flush = transmit.begin_flush(self._tx, trio.lowlevel.current_task())
        if flush is None:
            await self._transmitter.yield_turn()
            return
        try:
            await flush.done.wait()
        finally:
            transmit.end_flush(self._tx, flush)
            transmit.yielded()
        if flush.closed and (flush.groups or flush.batches):
            raise trio.ClosedResourceError("the KCM socket was closed during flush()")

    @asynccontextmanager
    async def batch(self) -> AsyncIterator[None]:
        """Group this task's sends on this socket (the kernel's ``MSG_BATCH``).

        Messages that this task sends on this socket inside the block are
        accepted as usual, but held, and handed to one stream together when the
        block ends -- also when it ends with an exception, since they were
        accepted.  If the send buffer fills inside the block, what was gathered
        so far goes out first (the kernel flushes a pending batch before it
        waits for memory).  Other tasks' sends are not affected.

        Inside the block, a :meth:`send` or :meth:`send_many` that is accepted
        without waiting checks for cancellation but does not yield to other
        tasks (it is a cancel point, not a schedule point): a loop of sends
        costs no trip through the scheduler per message.  The end of the block
        is a full checkpoint, and a send that finds the buffer full waits, so
        a batch never holds the event loop for longer than it takes to fill
        the send buffer.

        Raises:
          RuntimeError: This task is already inside a batch on this socket.
          trio.ClosedResourceError: The socket or mux is closed.

        """
        if self._closed:
            raise trio.ClosedResourceError("the KCM socket is closed")
        task = trio.lowlevel.current_task()
        batches = self._tx.batches
        if task in batches:
            raise RuntimeError("batch() blocks cannot nest on one socket")
        batch = batches[task] = Batch()
        try:
            yield
        finally:
            if batches.pop(task, None) is batch:
                self._transmitter.flush_batch(self._tx, batch)
        await trio.lowlevel.checkpoint()

    # -- receiving ------------------------------------------------------------

    def receive_nowait(self) -> bytes:
        """Take one queued message, or raise :exc:`trio.WouldBlock`.

        Raises:
          trio.WouldBlock: Nothing is queued.
          trio.ClosedResourceError: The socket or mux is closed.

        """
        return self._receive_nowait(1, self._receiver.take)[0]

    async def receive(self) -> bytes:
        """Wait for and return one whole message (header included).

        Messages are spread over a mux's sockets by its receive policy.  A
        socket has no end of stream: with no stream attached, this waits.

        Raises:
          trio.ClosedResourceError: The socket or mux is closed (also while
            waiting).

        """
        return (await self._receive(1, self._receiver.take))[0]

    def receive_many_nowait(self, max_messages: int) -> list[bytes]:
        """Take up to ``max_messages`` queued messages, or raise :exc:`trio.WouldBlock`."""
        _check_max_messages(max_messages)
        return self._receive_nowait(max_messages, self._receiver.take)

    async def receive_many(self, max_messages: int) -> list[bytes]:
        """Wait for messages; return all that are queued, up to ``max_messages``.

        The kernel's ``recvmmsg``: it waits only for the first message, then
        takes whatever else is already queued, without waiting per message.

        Raises:
          ValueError: ``max_messages`` is below 1.
          trio.ClosedResourceError: The socket or mux is closed.

        """
        _check_max_messages(max_messages)
        return await self._receive(max_messages, self._receiver.take)

    def _receive_nowait(self, max_messages: int, take: Callable[[SocketRx, int], T]) -> T:
        if self._closed:
            raise trio.ClosedResourceError("the KCM socket is closed")
        if not self._rx.queue:
            raise trio.WouldBlock
        return take(self._rx, max_messages)

    async def _receive(self, max_messages: int, take: Callable[[SocketRx, int], T]) -> T:
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._closed:
            raise trio.ClosedResourceError("the KCM socket is closed")
        rx = self._rx
        if rx.queue:
            messages = take(rx, max_messages)
            if not self._turns.skip():
                await self._transmitter.yield_turn()
            return messages
        task = trio.lowlevel.current_task()
        waiters = rx.waiters
        waiters.append(task)
        while True:

            def abort(_: object) -> trio.lowlevel.Abort:
                waiters.remove(task)
                return trio.lowlevel.Abort.SUCCEEDED

            try:
                await trio.lowlevel.wait_task_rescheduled(abort)
            finally:
                self._transmitter.yielded()
            if self._closed:
                raise trio.ClosedResourceError("the KCM socket is closed")
            if rx.queue:
                return take(rx, max_messages)
            # Another task took it first, or it moved away: wait at the head.
            waiters.appendleft(task)

    # -- SEQPACKET: a message in pieces ---------------------------------------

    def receive_some_nowait(self, max_bytes: int) -> tuple[bytes, bool]:
        """:meth:`receive_some`, or raise :exc:`trio.WouldBlock` if there is nothing to read."""
        rest = self._check_receive_some(max_bytes)
        if rest is None:
            if not self._rx.queue:
                raise trio.WouldBlock
            rest = (self._receiver.take(self._rx, 1)[0], 0)
        return self._piece(rest, max_bytes)

    async def receive_some(self, max_bytes: int) -> tuple[bytes, bool]:
        """Read a message in pieces of at most ``max_bytes`` (SEQPACKET).

        Returns the next piece of the message this task is reading, or, if it
        read the last one, the first piece of the next message (waiting for
        one, as :meth:`receive` does), and whether this piece ends its
        message (the kernel's ``MSG_EOR``).  A message that fits is returned
        whole, with ``True``.  Each task reads its own message: the rest of a
        message is kept for the task that started it, and :meth:`receive`
        always returns whole messages.  The message counts as received when
        its first piece is taken; its rest is dropped if the socket closes,
        the task ends, or it calls :meth:`abandon_message`.  A cancelled call
        took nothing.

        Raises:
          ValueError: ``max_bytes`` is below 1.
          OSError: ``EOPNOTSUPP``: the socket is DGRAM.
          trio.ClosedResourceError: The socket or mux is closed.

        """
        rest = self._check_receive_some(max_bytes)
        if rest is None:
            rest = ((await self._receive(1, self._receiver.take))[0], 0)
            return self._piece(rest, max_bytes)
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._closed:
            raise trio.ClosedResourceError("the KCM socket is closed")
        piece = self._piece(rest, max_bytes)
        if not self._turns.skip():
            await self._transmitter.yield_turn()
        return piece

    def _check_receive_some(self, max_bytes: int) -> tuple[bytes, int] | None:
        """Check the call; return the rest this task has to read, if any."""
        if not self._seqpacket:
            raise _not_seqpacket("receive_some()")
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        if self._closed:
            raise trio.ClosedResourceError("the KCM socket is closed")
        if self._reading is None:
            return None
        return self._reading.rest()

    def _piece(self, rest: tuple[bytes, int], max_bytes: int) -> tuple[bytes, bool]:
        if self._reading is None:
            self._reading = Reading()
        return self._reading.piece(rest, max_bytes)

    # -- origin and pinned replies (recvfrom / sendto) --------------------------

    def receive_from_nowait(self) -> tuple[bytes, AttachedStream]:
        """:meth:`receive_from`, or raise :exc:`trio.WouldBlock` if nothing is queued."""
        return self._receive_nowait(1, self._receiver.take_from)[0]

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
        return (await self._receive(1, self._receiver.take_from))[0]

    def receive_many_from_nowait(self, max_messages: int) -> list[tuple[bytes, AttachedStream]]:
        """:meth:`receive_many_from`, or raise :exc:`trio.WouldBlock` if nothing is queued."""
        _check_max_messages(max_messages)
        return self._receive_nowait(max_messages, self._receiver.take_from)

    async def receive_many_from(self, max_messages: int) -> list[tuple[bytes, AttachedStream]]:
        """:meth:`receive_many`, each message with the stream it came on.

        Returns:
          1 to ``max_messages`` ``(message, handle)`` pairs, as
          :meth:`receive_from` returns them.

        Raises:
          ValueError: ``max_messages`` is below 1.
          trio.ClosedResourceError: The socket or mux is closed.

        """
        _check_max_messages(max_messages)
        return await self._receive(max_messages, self._receiver.take_from)

    def send_to_nowait(self, message: bytes, handle: AttachedStream) -> None:
        """:meth:`send_to`, or raise :exc:`trio.WouldBlock` if the send buffer is full."""
        message = self._check.prepare(message)
        if self._closed:
            raise trio.ClosedResourceError("the KCM socket is closed")
        if not self._transmitter.try_send_to(self._tx, handle, [message], len(message)):
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
        message = self._check.prepare(message)
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._closed:
            raise trio.ClosedResourceError("the KCM socket is closed")
        transmit = self._transmitter
        if transmit.send_now(self._tx, [message], len(message), handle):
            if not self._turns.skip():
                await transmit.yield_turn()
            return
        await transmit.wait_send(self._tx, [message], len(message), handle)

    def __aiter__(self) -> KCMSocket:
        return self

    async def __anext__(self) -> bytes:
        """Receive the next message; iteration ends when the mux closes."""
        try:
            return await self.receive()
        except trio.ClosedResourceError:
            if self._rx.closed_by_mux:
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
        if self._rx.enabled:
            self._receiver.disable(self._rx)

    def enable_receive(self) -> None:
        """Take new messages again (undoes :meth:`disable_receive`)."""
        if self._closed:
            raise trio.ClosedResourceError("the KCM socket is closed")
        if not self._rx.enabled:
            self._receiver.enable(self._rx)

    async def aclose(self) -> None:
        """Close the socket.  Idempotent.

        Messages queued for it move to other sockets (or wait in the mux until
        one has room).  Messages it already accepted for sending still go out,
        and an open :meth:`batch` of another task is flushed.  Tasks blocked in
        :meth:`send` (not yet accepted) or :meth:`receive` get
        :exc:`trio.ClosedResourceError`.  The mux and its streams go on.
        """
        close_socket(self, by_mux=False)
        await trio.lowlevel.checkpoint()

    async def __aenter__(self) -> KCMSocket:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def statistics(self) -> SocketStatistics:
        """Return a snapshot of this socket's counters."""
        rx = self._rx
        tx = self._tx
        return SocketStatistics(
            rx_msgs=rx.msgs,
            rx_bytes=rx.bytes,
            tx_msgs=tx.msgs,
            tx_bytes=tx.bytes,
            rx_queued_msgs=len(rx.queue),
            rx_queued_bytes=rx.queued_bytes,
            tx_queued_msgs=tx.queued_msgs,
            tx_queued_bytes=tx.queued_bytes,
            receive_enabled=rx.enabled,
            receive_ready=self in self._receiver.candidates,
            tx_waiting=bool(tx.queue),
            tx_batched_msgs=sum(len(b.messages) for b in tx.batches.values()),
            tx_expired=tx.expired,
        )

    def __repr__(self) -> str:
        flags = " closed" if self._closed else ("" if self._rx.enabled else " rx-disabled")
        return f"<KCMSocket kcm-{self._index}{flags}>"


def close_socket(sock: KCMSocket, *, by_mux: bool) -> None:
    """Close ``sock`` (:meth:`KCMSocket.aclose`, or the mux closing it: ``by_mux``).

    Tasks waiting to send (not accepted) or to receive get
    :exc:`trio.ClosedResourceError`; accepted messages still go out, open
    batches included; queued messages move to other sockets.
    """
    if sock._closed:
        return
    sock._closed = True
    sock._building = sock._reading = None  # SEQPACKET: unfinished messages are dropped
    sock._forget(sock)
    sock._transmitter.close_socket(sock._tx)
    sock._receiver.close_socket(sock._rx, by_mux=by_mux)


def withdraw_unwritten(sock: KCMSocket, handle: AttachedStream, message: bytes) -> bool:
    """Take back ``message``, which ``sock`` sent alone to ``handle``, if it is unwritten.

    For a requester whose call was cancelled: returns whether the message was
    still waiting in the stream's queue, and is withdrawn (never written).
    """
    return sock._transmitter.withdraw(sock._tx, life_of(handle).tx, message)
