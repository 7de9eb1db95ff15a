"""The mux: configuration, registries, the public API, and closing.

:class:`Mux` is a facade over four parts, each in its own module and each the
only owner of its state (``docs/design.md`` has the picture):

* ``_transmit.py``: the transmit scheduler -- send buffers, the transmit
  policy and its exact candidate set, the writers;
* ``_receive.py``: the receive scheduler -- the readers, the receive policy
  and its candidate set, socket queues, the hold queue;
* ``_lifecycle.py``: each stream's task tree, failure, stalls and release,
  its phase moving only as ``_state.py`` allows;
* ``_feeds.py``: the bounded error and event feeds of the monitor.

A :class:`KCMSocket` talks to the two schedulers directly; the mux keeps the
configuration, the registry of sockets, and the closing sequence, whose steps
:func:`open_mux` runs in the order their names give.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import final

import trio

from ._budget import Budget
from ._bugs import BugReport
from ._errors import StreamError
from ._events import MuxEvent
from ._feeds import ERROR_BACKLOG, EVENT_BACKLOG
from ._lifecycle import Lifecycle, lowest_free
from ._outgoing import OutgoingCheck
from ._parsers import Parser, ParserLike, as_parser
from ._policy import Policy, bind_policy, resolve_policies
from ._receive import Receiver
from ._request import KeyFunction, Requester, open_requester
from ._serve import Handshake, serve_stream
from ._socket import KCMSocket, SocketType, close_socket
from ._stats import MuxStatistics, StreamState, StreamTotals
from ._stream import AttachedStream, life_of
from ._supervise import DEFAULT_BACKOFF, Backoff, supervise
from ._transmit import Transmitter

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

__all__ = ["DEFAULT_RECEIVE_MEMORY_LIMIT", "ERROR_BACKLOG", "EVENT_BACKLOG", "Mux", "open_mux"]

#: open_mux's receive_memory_limit (see docs/reliability.md for how it was chosen).
DEFAULT_RECEIVE_MEMORY_LIMIT = 64 * 1024 * 1024

logger = logging.getLogger("trio_kcm")
logger.addHandler(logging.NullHandler())


@final
class Mux:
    """A connection multiplexor: M attached streams, N KCM sockets.

    Made by :func:`open_mux`, never directly.  Streams are attached with
    :meth:`attach`, message endpoints opened with :meth:`socket`, failures
    watched with :meth:`errors`.
    """

    def __init__(
        self,
        *,
        parser: Parser,
        rx_policy: Policy,
        tx_policy: Policy,
        socket_type: SocketType,
        max_message_size: int,
        assembly_timeout: float | None,
        receive_buffer_size: int,
        send_buffer_size: int,
        auto_close: bool,
        retry_in_doubt: bool,
        close_timeout: float,
        validate: bool,
        tx_stall_timeout: float | None = None,
        receive_memory_limit: int | None = None,
    ) -> None:
        self._parser = parser
        self._rx_policy = rx_policy
        self._tx_policy = tx_policy
        self._socket_type = socket_type
        self._max_message_size = max_message_size
        self._assembly_timeout = assembly_timeout
        self._receive_buffer_size = receive_buffer_size
        self._send_buffer_size = send_buffer_size
        self._close_timeout = close_timeout
        self._bugs = BugReport()
        self._check = OutgoingCheck(parser, max_message_size, validate)
        self._transmit = Transmitter(self, tx_policy, self._bugs)
        self._budget = None if receive_memory_limit is None else Budget(receive_memory_limit)
        self._receive = Receiver(rx_policy, self._bugs, self._budget)
        self._lifecycle = Lifecycle(
            self,
            self._transmit,
            self._receive,
            self._bugs,
            auto_close=auto_close,
            retry_in_doubt=retry_in_doubt,
            close_timeout=close_timeout,
            tx_stall_timeout=tx_stall_timeout,
        )
        self._sockets: dict[KCMSocket, None] = {}
        self._socket_indices: set[int] = set()
        self._rx_ready_drops = 0
        self._tx_dropped = 0

    # ------------------------------------------------------------------------
    # public API

    @property
    def parser(self) -> Parser:
        """The mux's parser (streams may override it at attach)."""
        return self._parser

    @property
    def socket_type(self) -> SocketType:
        """The type of this mux's sockets."""
        return self._socket_type

    @property
    def max_message_size(self) -> int:
        """The largest message, in bytes, sent or received."""
        return self._max_message_size

    @property
    def rx_policy(self) -> Policy:
        """The policy that picks a socket for each received message."""
        return self._rx_policy

    @property
    def tx_policy(self) -> Policy:
        """The policy that picks a stream for each transmit group."""
        return self._tx_policy

    @property
    def sockets(self) -> tuple[KCMSocket, ...]:
        """The open KCM sockets."""
        return tuple(self._sockets)

    @property
    def streams(self) -> tuple[AttachedStream, ...]:
        """The attached streams: active ones, and failed ones not unattached yet."""
        return tuple(self._lifecycle.streams)

    def socket(
        self,
        *,
        receive_buffer_size: int | None = None,
        send_buffer_size: int | None = None,
        time_to_live: float | None = None,
        expire_at_deadline: bool = False,
    ) -> KCMSocket:
        """Open a new KCM socket on this mux.

        A message the socket accepted may wait before it is written: for a
        stream to be attached, or behind others in a stream's queue.  With
        ``time_to_live`` or ``expire_at_deadline`` it waits only so long: once
        *stale*, it is withdrawn unwritten -- from its socket's queue or its
        stream's, never in the middle of its write, so it is written whole or
        not at all -- and counted in :attr:`SocketStatistics.tx_expired` and
        :attr:`MuxStatistics.tx_expired`, and in the statistics only: its
        sender has moved on.  A message whose write has begun goes out.

        ``expire_at_deadline=True`` makes each message stale at the deadline
        of the task that sent it (:func:`trio.current_effective_deadline`,
        read when it sent): a request sent inside ``with
        trio.fail_after(2):`` is one nobody waits for two seconds later, so
        it is not sent late.  It is off by default because a deadline means
        "stop waiting" to most code, not "take back what I sent": a ``send``
        that returned under a deadline delivers, as a kernel socket would.

        Args:
          receive_buffer_size: Bytes of received messages it may queue; the
            mux's ``receive_buffer_size`` by default.
          send_buffer_size: Bytes of accepted, unwritten messages it may hold;
            the mux's ``send_buffer_size`` by default.
          time_to_live: Seconds a message may wait, from when it is accepted
            (a ``batch()``'s messages: from when the block ends); None: no
            limit.
          expire_at_deadline: A message is also stale at its sender's deadline.

        Raises:
          trio.ClosedResourceError: The mux is closed.
          ValueError: A size is below 1, or ``time_to_live`` is not above 0.

        """
        if self._lifecycle.closing:
            raise trio.ClosedResourceError("the mux is closed")
        rbs = self._receive_buffer_size if receive_buffer_size is None else receive_buffer_size
        sbs = self._send_buffer_size if send_buffer_size is None else send_buffer_size
        if rbs < 1 or sbs < 1:
            raise ValueError("buffer sizes must be >= 1")
        if time_to_live is not None and not time_to_live > 0:
            raise ValueError("time_to_live must be > 0 (or None)")
        if time_to_live is not None or expire_at_deadline:
            # The first socket whose messages go stale starts the task that withdraws them.
            assert self._lifecycle.nursery is not None
            self._transmit.expiry.start(self._lifecycle.nursery, self._transmit.withdraw_late)
        sock = KCMSocket(
            self,
            lowest_free(self._socket_indices),
            transmit=self._transmit,
            receive=self._receive,
            check=self._check,
            socket_type=self._socket_type,
            receive_buffer_size=rbs,
            send_buffer_size=sbs,
            forget=self._forget_socket,
            time_to_live=time_to_live,
            expire_at_deadline=expire_at_deadline,
        )
        self._sockets[sock] = None
        return sock

    def _forget_socket(self, sock: KCMSocket) -> None:
        self._sockets.pop(sock, None)
        self._socket_indices.discard(sock.index)

    def attach(
        self,
        stream: trio.abc.Stream,
        *,
        unread_data: bytes | bytearray | memoryview = b"",
        parser: ParserLike | None = None,
        max_message_size: int | None = None,
        assembly_timeout: float | None = None,
    ) -> AttachedStream:
        """Attach ``stream`` to the mux (the kernel's ``SIOCKCMATTACH``).

        From now on the mux owns the stream: a reader task splits what it
        receives into messages for the sockets, a writer task writes the
        messages the transmit policy gives it.  The stream must sit at a
        message boundary (any handshake done), unless ``unread_data`` holds
        the bytes from the boundary on.  It is offered for transmit at once,
        and bytes it already buffered are parsed.

        Args:
          stream: Any :class:`trio.abc.Stream`: a TCP or Unix
            :class:`trio.SocketStream`, a :class:`trio.SSLStream`, an
            in-memory stream.
          unread_data: Bytes that were read from ``stream`` before it was
            attached and belong to its messages: what a handshake read past
            its own end, or the :attr:`AttachedStream.unread_data` of the
            handle :meth:`unattach` handed it back with.  The mux parses them
            first, exactly as if it had read them (a bad header in them fails
            the stream, as it would on the wire).  Any bytes-like object.
          parser: This stream's parser; the mux's by default.  (Outgoing
            messages are always checked with the mux's parser.)
          max_message_size: For this stream's incoming messages; the mux's by
            default.
          assembly_timeout: Seconds for this stream's incoming messages; the
            mux's by default.

        Returns:
          The stream's handle.

        Raises:
          trio.ClosedResourceError: The mux is closed.
          ValueError: The stream is already attached to a mux.

        """
        lifecycle = self._lifecycle
        if lifecycle.closing or lifecycle.nursery is None:
            raise trio.ClosedResourceError("the mux is closed")
        lifecycle.check_free(stream)
        p = self._parser if parser is None else as_parser(parser)
        mms = self._max_message_size if max_message_size is None else max_message_size
        timeout = self._assembly_timeout if assembly_timeout is None else assembly_timeout
        _check_timeout(timeout, "assembly_timeout")
        if isinstance(unread_data, str):
            raise TypeError("unread_data is bytes, not str")
        # memoryview: only the buffer protocol (bytes(12) would be 12 zeros).
        data = unread_data if type(unread_data) is bytes else memoryview(unread_data).tobytes()
        return lifecycle.attach(stream, p, mms, timeout, data)

    async def unattach(self, handle: AttachedStream) -> trio.abc.Stream:
        """Detach a stream and hand it back, open (the kernel's ``SIOCKCMUNATTACH``).

        For an active stream: it stops being picked for new messages, messages
        queued for it and not started go to other streams, its reader stops,
        and a write in progress is allowed to finish -- this waits for it.
        Complete messages it had read are still delivered; bytes of a message
        that had not fully arrived are put in :attr:`AttachedStream.unread_data`.
        The handle's state becomes ``"unattached"``.

        For a failed stream (it stays ``"failed"``): it waits for the stream's
        tasks to end and hands it back -- already closed if the mux closed it
        (``auto_close=True``).  Unattaching a failed stream is not an error.

        If this is cancelled while a write is in progress, the stream is failed
        (``EPIPE``; the write's messages are in doubt) and the cancellation
        propagates: the stream stays attached, as ``"failed"``, for the mux (or
        a later :meth:`unattach`) to close.  With no write in progress (or one
        that has just ended) there is nothing in doubt, and the unattach
        completes; the cancellation is then delivered at the next checkpoint.

        Raises:
          ValueError: ``handle`` is not attached to this mux (any more).
          trio.BusyResourceError: Another task is unattaching it.
          trio.ClosedResourceError: The mux has closed (and closed its streams).

        """
        await trio.lowlevel.checkpoint_if_cancelled()
        life = life_of(handle)
        if life.owner is not self:
            raise ValueError(f"{handle!r} is not attached to this mux")
        if handle.state is StreamState.UNATTACHED:
            raise ValueError(f"{handle!r} was already unattached")
        if self._lifecycle.finished:
            raise trio.ClosedResourceError("the mux is closed: it closed its streams")
        return await self._lifecycle.unattach(life)

    async def supervise(
        self,
        connect: Callable[[], Awaitable[trio.abc.Stream]],
        *,
        count: int = 1,
        backoff: Backoff = DEFAULT_BACKOFF,
        connect_timeout: float | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Keep ``count`` streams from ``connect()`` attached, reconnecting as they fail.

        Run it in a nursery; with :meth:`trio.Nursery.start` it returns once
        ``count`` streams are attached for the first time::

            async with trio.open_nursery() as nursery:
                async with trio_kcm.open_mux(parser=parser) as mux:
                    await nursery.start(functools.partial(mux.supervise, connect, count=4))
                    ...  # the mux closes: supervise returns by itself

        For each of ``count`` slots it calls ``connect()``, attaches the
        stream it returns, and waits.  When the stream fails, the mux reports
        it as usual (:meth:`errors`, :class:`StreamFailed`) and, with
        ``auto_close=True``, unattaches and closes it; with
        ``auto_close=False`` the supervisor does.  Then, after a delay from
        ``backoff``, it connects again.  A ``connect()`` that raises
        :exc:`OSError` (refused, unreachable, a TLS certificate error),
        :exc:`trio.BrokenResourceError` (e.g. a failed TLS handshake), or
        outlasts ``connect_timeout``, is retried the same way: it is not
        fatal.  A stream the application unattached is replaced at once.
        Every reconnect is announced on :meth:`events` as a
        :class:`ReconnectScheduled` naming the stream it replaces and why.

        Cancelling it stops the reconnecting (and a ``connect()`` in
        progress); the streams it attached stay attached, the mux's as any
        other.  It returns when the mux closes, so a nursery around the mux
        block needs no cancelling; in a nursery inside the block, cancel it.

        Args:
          connect: An async function returning a connected
            :class:`trio.abc.Stream`, at a message boundary (finish a TLS
            handshake in it, with :meth:`trio.SSLStream.do_handshake`, so
            that a failed one is retried like a failed connect).
          count: How many streams to keep attached.
          backoff: The delays between attempts (a :class:`Backoff`).
          connect_timeout: Seconds allowed for each ``connect()``; ``None``
            for no limit.
          task_status: For :meth:`trio.Nursery.start`: started once ``count``
            streams were attached.

        Raises:
          ValueError: ``count`` is below 1, or ``connect_timeout`` is not > 0.
          trio.ClosedResourceError: The mux is closed.
          Exception: Whatever ``connect()`` raises other than the errors it
            retries: a bug propagates.

        """
        await supervise(
            self,
            self._lifecycle,
            connect,
            count=count,
            backoff=backoff,
            connect_timeout=connect_timeout,
            task_status=task_status,
        )

    async def serve_stream(
        self,
        stream: trio.abc.Stream,
        *,
        handshake: Handshake | None = None,
        handshake_timeout: float | None = None,
        parser: ParserLike | None = None,
        max_message_size: int | None = None,
        assembly_timeout: float | None = None,
    ) -> None:
        """Attach ``stream`` and wait until the mux is done with it: a server's handler.

        It is the handler :func:`trio.serve_tcp` and
        :func:`trio.serve_listeners` call for each connection, which close
        the stream when it returns; so it returns only once the stream left
        the mux: it failed (the peer closed it, a bad header, ...), it was
        unattached, or the mux closed.  Replies go back to each client with
        :meth:`KCMSocket.receive_from` and :meth:`KCMSocket.send_to`::

            async with trio_kcm.open_mux(parser=parser) as mux, trio.open_nursery() as nursery:
                listeners = await nursery.start(trio.serve_tcp, mux.serve_stream, port)
                ...

        ``handshake``, if given, runs first: an async function that reads the
        connection's preamble (a greeting, a version, a PROXY header) and
        returns the bytes it read past it, which the mux parses first (see
        ``unread_data`` in :meth:`attach`).  If it raises, or outlasts
        ``handshake_timeout``, that connection alone is dropped: the
        stream is closed, the error logged at WARNING, and this returns
        normally, so the server goes on.  (Wrap the stream yourself, e.g. in
        a :class:`trio.SSLStream`, in a handler of your own that then calls
        this.)

        If this is cancelled while the stream is attached (the server is
        stopping), the stream fails (``EPIPE``, "its serve_stream() handler
        was cancelled"): it leaves the mux before Trio closes it, and its
        queued messages go to other streams, as for any failure.  A stream
        you :meth:`unattach` makes this return, and then ``serve_tcp`` closes
        it: unattach only streams you accepted yourself.

        Args:
          stream: The accepted connection.
          handshake: ``async (stream) -> bytes | None``, or None for none.
          handshake_timeout: Seconds allowed for ``handshake``; None: no limit.
          parser, max_message_size, assembly_timeout: As for :meth:`attach`.

        Raises:
          trio.ClosedResourceError: The mux is closed (the stream is closed).

        """
        if handshake_timeout is not None and not handshake_timeout > 0:
            raise ValueError("handshake_timeout must be > 0 (or None)")
        await serve_stream(
            self,
            self._lifecycle,
            stream,
            handshake=handshake,
            handshake_timeout=handshake_timeout,
            parser=parser,
            max_message_size=max_message_size,
            assembly_timeout=assembly_timeout,
        )

    def open_requester(
        self,
        *,
        key: KeyFunction | None = None,
        request_key: KeyFunction | None = None,
        receive_buffer_size: int | None = None,
        send_buffer_size: int | None = None,
    ) -> AbstractAsyncContextManager[Requester]:
        """Open a :class:`Requester`: calls over this mux's streams, replies matched.

        Use it as an async context manager; it opens a KCM socket of its own
        (with these buffer sizes, see :meth:`socket`) and a task that reads
        the replies, and closes both on exit, where calls still waiting
        raise :exc:`trio.ClosedResourceError`::

            def seqid(message: bytes) -> int:
                return int.from_bytes(message[4:8], "big")

            async with mux.open_requester(key=seqid) as requester:
                reply = await requester.request(frame)

        Args:
          key: ``key(message)`` reads the key that pairs a reply with its
            request: a Thrift seqid, a DNS id, an nng request id.  None:
            replies are matched by order on each stream.
          request_key: Reads the key of a request, where requests keep it
            elsewhere than replies (a Kafka correlation id); ``key`` by
            default.
          receive_buffer_size, send_buffer_size: As for :meth:`socket`.

        Raises:
          trio.ClosedResourceError: The mux is closed.
          ValueError: A size is below 1; or ``request_key`` without ``key``.

        """
        if request_key is not None and key is None:
            raise ValueError("request_key needs key (without key, replies match by order)")
        sock = self.socket(
            receive_buffer_size=receive_buffer_size, send_buffer_size=send_buffer_size
        )
        return open_requester(
            sock, self._transmit, self._lifecycle, key=key, request_key=request_key
        )

    def errors(self) -> AsyncIterator[StreamError]:
        """Iterate over stream failures: the monitoring task's feed.

        Each :class:`StreamError` is taken once: with several monitors, each
        error goes to one of them.  Errors wait in the mux until taken (one per
        failed stream), so a monitor that starts late sees every one -- with
        one bound, so that memory stays bounded with no monitor: beyond 1,024
        waiting errors of streams no longer attached (closed by
        ``auto_close``), the oldest are dropped and counted in
        :attr:`MuxStatistics.errors_dropped`.
        Iteration ends when the mux has closed and every error was taken.  The
        iterator needs no closing.

        Example::

            async for err in mux.errors():
                log.warning("stream %s failed: %s", err.stream.index, err)
                # with auto_close=False: await mux.unattach(err.stream) and close it

        """
        return self._lifecycle.errors.iterate()

    def events(self) -> AsyncIterator[MuxEvent]:
        """Iterate over what happens to the streams: the monitor's feed.

        Beside :meth:`errors`, a feed of :class:`MuxEvent` objects, each naming
        the stream it is about: :class:`StreamAttached`,
        :class:`StreamUnattached`, :class:`StreamFailed`,
        :class:`StreamStalled`, :class:`StreamResumed`, and
        :class:`ReconnectScheduled` from :meth:`supervise`.  They come in the
        order they happened.

        As with :meth:`errors`, each event is taken once (with several
        monitors, each event goes to one of them), and events wait in the mux
        until taken, so a monitor that starts late sees what happened before
        -- with one bound, so that memory stays bounded with no monitor: beyond
        1,024 waiting events the oldest are dropped and counted in
        :attr:`MuxStatistics.events_dropped`.  Iteration ends when the mux has
        closed and every event was taken.  The iterator needs no closing.

        Example::

            async for event in mux.events():
                if isinstance(event, trio_kcm.StreamFailed):
                    log.warning("psock-%d failed: %s", event.stream.index, event.error)

        """
        return self._lifecycle.events.iterate()

    def statistics(self) -> MuxStatistics:
        """Return a snapshot of the mux's counters."""
        transmit = self._transmit
        receive = self._receive
        lifecycle = self._lifecycle
        budget = self._budget
        return MuxStatistics(
            rx_msgs=receive.msgs,
            rx_bytes=receive.bytes,
            tx_msgs=transmit.msgs,
            tx_bytes=transmit.bytes,
            tx_retries=transmit.retries,
            rx_ready_drops=self._rx_ready_drops,
            tx_dropped=self._tx_dropped,
            tx_expired=transmit.expired,
            psock_attach=lifecycle.attaches,
            psock_unattach=lifecycle.unattaches,
            streams=len(lifecycle.streams),
            sockets=len(self._sockets),
            stream_errors=lifecycle.failures,
            errors_dropped=lifecycle.errors.dropped,
            events_dropped=lifecycle.events.dropped,
            rx_buffered=0 if budget is None else budget.used,
            rx_budget_waiting=0 if budget is None else budget.waiting,
            rx_budget_holds=0 if budget is None else budget.holds,
            rx_budget_failures=0 if budget is None else budget.failures,
        )

    def stream_totals(self) -> StreamTotals:
        """Return the counters of every stream this mux ever had, added up.

        The kernel's psock totals (the ``Psock`` line of
        ``/proc/net/kcm_stats``; see :func:`format_kcm_stats`) for this mux:
        the streams attached now and those that left.
        """
        return self._lifecycle.totals()

    def __repr__(self) -> str:
        state = " closed" if self._lifecycle.closing else ""
        streams = len(self._lifecycle.streams)
        return f"<trio_kcm.Mux{state} sockets={len(self._sockets)} streams={streams}>"

    # ------------------------------------------------------------------------
    # closing: open_mux runs these steps in this order

    def _start(self, nursery: trio.Nursery) -> None:
        """The mux's nursery is open: streams may be attached."""
        self._lifecycle.nursery = nursery
        self._bugs.nursery = nursery

    def _close_1_refuse_new(self) -> None:
        """No new sockets, sends or attaches; every socket closes."""
        self._lifecycle.begin_closing()
        for sock in list(self._sockets):
            close_socket(sock, by_mux=True)

    async def _close_2_flush(self) -> None:
        """Wait (up to close_timeout) until what was accepted is written."""
        self._lifecycle.graceful = True
        with trio.move_on_after(self._close_timeout):
            await self._transmit.drain()

    def _close_3_stop_streams(self) -> None:
        """Count and log what could not be flushed or delivered; stop the streams."""
        dropped = self._transmit.unsent()
        self._tx_dropped += dropped
        lives = list(self._lifecycle.streams.values())
        undelivered = self._receive.undelivered([life.rx for life in lives])
        self._rx_ready_drops += undelivered
        if dropped or undelivered:
            logger.warning(
                "mux closed with %d accepted message(s) unsent and %d received message(s)"
                " undelivered",
                dropped,
                undelivered,
            )
        # Nothing is re-dispatched: no stream is left.
        self._lifecycle.stop()
        self._transmit.expiry.stop()

    async def _close_4_release_the_rest(self) -> None:
        """All tasks are done: close the streams still attached, end the feeds."""
        await self._lifecycle.finish()


def _check_timeout(value: float | None, name: str) -> None:
    if value is not None and not (value > 0):
        raise ValueError(f"{name} must be None or > 0, not {value!r}")


@asynccontextmanager
async def open_mux(
    *,
    parser: ParserLike,
    policy: str | Policy = "batch-affinity",
    rx_policy: str | Policy | None = None,
    tx_policy: str | Policy | None = None,
    socket_type: SocketType = SocketType.DGRAM,
    max_message_size: int = 8 * 1024 * 1024,
    assembly_timeout: float | None = None,
    receive_buffer_size: int = 256 * 1024,
    send_buffer_size: int = 256 * 1024,
    auto_close: bool = True,
    retry_in_doubt: bool = True,
    close_timeout: float = 5.0,
    validate: bool = True,
    tx_stall_timeout: float | None = None,
    receive_memory_limit: int | None = DEFAULT_RECEIVE_MEMORY_LIMIT,
) -> AsyncIterator[Mux]:
    """Open a connection multiplexor; an async context manager.

    Example::

        async with trio_kcm.open_mux(parser=trio_kcm.LengthPrefixed(">I", adjust=4)) as mux:
            mux.attach(await trio.open_tcp_stream(host, port))
            sock = mux.socket()
            await sock.send(request)
            reply = await sock.receive()

    Args:
      parser: Delineates messages: a :class:`Parser` (e.g.
        :class:`LengthPrefixed`, :class:`Delimited`) or a plain callable
        ``(memoryview) -> int``.  Also checks outgoing messages.
      policy: The load-balancing policy for both directions: a name from
        :func:`available_policies` or a :class:`Policy` object.
      rx_policy: Overrides ``policy`` for receive (picking sockets).
      tx_policy: Overrides ``policy`` for transmit (picking streams).
      socket_type: :attr:`SocketType.DGRAM` or :attr:`SocketType.SEQPACKET`.
      max_message_size: The largest message in bytes, in either direction
        (``EMSGSIZE`` above it).
      assembly_timeout: Seconds a message may take to arrive, from its first
        byte; ``None`` for no limit (``ETIMEDOUT`` when exceeded).
      receive_buffer_size: Default per-socket receive buffer, in bytes.
      send_buffer_size: Default per-socket send buffer, in bytes.
      auto_close: Whether the mux unattaches and closes a failed stream itself.
        With ``False`` it stays attached (as ``"failed"``, used for nothing)
        until you :meth:`~Mux.unattach` it, as the kernel requires.
      retry_in_doubt: Whether messages whose write failed part-way are resent
        on another stream (the peer may then get one twice).  Either way they
        are listed in :attr:`StreamError.in_doubt`.
      close_timeout: Seconds allowed, when the block exits normally, for
        writing what was accepted; also bounds closing each stream.
      validate: Whether outgoing messages are checked with ``parser``.
      tx_stall_timeout: Seconds a stream's write may make no progress; ``None``
        (the default) for no limit.  A stream whose write outlasts it is
        *stalled*: the transmit policy no longer gets it, and the messages
        queued on it that had not started move to other streams (the one in
        flight never moves, nor do messages sent to it with
        :meth:`KCMSocket.send_to`).  It is seen within a quarter of the
        timeout, and reported as a :class:`StreamStalled` event; when the
        write completes, the stream is used again (:class:`StreamResumed`).
        A stall does not fail the stream: do that yourself if you want it
        gone (:meth:`Mux.unattach`).
      receive_memory_limit: Bytes of received data the mux may hold, across
        all its streams: partly assembled messages, and complete ones the
        application has not taken.  A large message is read once its whole
        announced length fits, and waits at its header until then (its
        stream is not read: TCP's window pushes back on the peer); at the
        limit streams with small messages go on, 4 KiB at a time.
        Messages may hold three quarters of the limit, reads in progress the
        rest; a message larger than those three quarters can never fit and
        fails its stream (``ENOBUFS``), whatever ``max_message_size``
        allows.  See ``docs/reliability.md``.  64 MiB by default; at least
        8 KiB; ``None`` for no limit.

    On a normal exit it closes every socket (tasks waiting in them get
    :exc:`trio.ClosedResourceError`), waits up to ``close_timeout`` for the
    accepted messages to be written, then closes the attached streams.  What
    could not be written is counted in :attr:`MuxStatistics.tx_dropped`, and
    received messages nobody took in :attr:`MuxStatistics.rx_ready_drops`; both
    are logged.  If the block raises, nothing is flushed: the streams are
    closed at once and the exception propagates unchanged.

    Raises:
      PolicyLoadError: A policy name is unknown or its plugin is broken.
      ValueError: An argument is out of range, or a policy object already
        serves another open mux (a policy object serves one mux at a time).
      BaseExceptionGroup: A policy raised (a bug): its exception comes out of
        the mux's nursery.

    """
    if max_message_size < 1:
        raise ValueError("max_message_size must be >= 1")
    if receive_buffer_size < 1 or send_buffer_size < 1:
        raise ValueError("buffer sizes must be >= 1")
    if not isinstance(socket_type, SocketType):
        raise ValueError(f"socket_type must be a SocketType, not {socket_type!r}")
    _check_timeout(assembly_timeout, "assembly_timeout")
    _check_timeout(tx_stall_timeout, "tx_stall_timeout")
    if not close_timeout >= 0:
        raise ValueError("close_timeout must be >= 0")
    the_parser = as_parser(parser)
    rx, tx = resolve_policies(policy, rx_policy, tx_policy)
    mux = Mux(
        parser=the_parser,
        rx_policy=rx,
        tx_policy=tx,
        socket_type=socket_type,
        max_message_size=max_message_size,
        assembly_timeout=assembly_timeout,
        receive_buffer_size=receive_buffer_size,
        send_buffer_size=send_buffer_size,
        auto_close=auto_close,
        retry_in_doubt=retry_in_doubt,
        close_timeout=close_timeout,
        validate=validate,
        tx_stall_timeout=tx_stall_timeout,
        receive_memory_limit=receive_memory_limit,
    )
    body_exc: BaseException | None = None
    unwrap = False
    with bind_policy(rx, mux), bind_policy(tx, mux):
        try:
            async with trio.open_nursery() as nursery:
                mux._start(nursery)
                try:
                    yield mux
                except BaseException as exc:
                    body_exc = exc
                    mux._close_1_refuse_new()
                    mux._close_3_stop_streams()
                    nursery.cancel_scope.cancel()
                    raise
                try:
                    mux._close_1_refuse_new()
                    await mux._close_2_flush()
                except BaseException as exc:
                    body_exc = exc
                    nursery.cancel_scope.cancel()
                    raise
                finally:
                    mux._close_3_stop_streams()
                # The streams close themselves as their tasks end (Lifecycle.run).
        except BaseExceptionGroup as group:
            # The body's own exception alone comes out as itself, not in a group.
            if body_exc is not None and _only(group, body_exc):
                unwrap = True
            else:
                raise
        finally:
            await mux._close_4_release_the_rest()
    if unwrap:
        assert body_exc is not None
        raise body_exc


def _only(group: BaseExceptionGroup[BaseException], exc: BaseException) -> bool:
    """Is ``exc`` the only exception in ``group`` (Cancelled of our own aside)?"""
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        e = stack.pop()
        if isinstance(e, BaseExceptionGroup):
            stack.extend(e.exceptions)
        else:
            leaves.append(e)
    return all(leaf is exc for leaf in leaves)
