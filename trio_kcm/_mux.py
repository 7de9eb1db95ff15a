"""The mux: where tasks, cancel scopes, streams, sockets and policies meet.

Who owns what (see also ``docs/design.md``):

* ``open_mux`` owns a nursery.  Each attached stream gets one task there,
  running inside the stream's own cancel scope, with two children: a *reader*
  (``receive_some`` -> assembler -> rx policy -> socket queues) and a *writer*
  (the stream's queue of transmit groups -> one ``send_all`` per batch of
  queued groups).  Nothing else runs in the nursery.
* The scheduling is synchronous and lives here: senders call it from their own
  task when a message is accepted (pick a stream, queue the group, wake the
  writer), readers call it for each read (pick a socket per message, queue it,
  wake a receiver).  No message hops through a task of its own.
* A message is accepted into its socket's send buffer, then queued on exactly
  one stream, then written by that stream's writer in one ``send_all``.  Only
  the writer writes, so two messages never interleave; a message leaves a
  stream's queue only whole (written) or, if the stream fails, together with
  its write's other messages as "in doubt".  User cancellation reaches only
  senders that are still waiting for buffer space, i.e. messages that were
  never accepted.
* A stream that fails (``_fail``) leaves the candidate sets at once; its
  unwritten messages go back to their sockets' queues and are picked for
  again, its complete-but-undelivered messages go to the mux's hold queue, and
  a ``StreamError`` waits in ``_errors`` for a monitor.
"""

from __future__ import annotations

import bisect
import errno as _errno
import itertools
import logging
import math
import operator
import sys
import weakref
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Generic, TypeVar, final

import outcome
import trio
import trio_util

from ._assembler import Assembler, AssemblyError, _Unpack
from ._errors import BadMessage, StreamError
from ._events import (
    MuxEvent,
    StreamAttached,
    StreamFailed,
    StreamResumed,
    StreamStalled,
    StreamUnattached,
)
from ._parsers import Parser, ParserLike, as_parser
from ._policy import Policy, resolve_policy
from ._socket import KCMSocket, SocketType, _Batch
from ._stats import MuxStatistics, StreamState
from ._stream import AttachedStream, PinnedTxGroup, TxGroup
from ._supervise import DEFAULT_BACKOFF, Backoff, supervise

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

__all__ = ["Mux", "open_mux"]

_first = operator.itemgetter(0)
logger = logging.getLogger("trio_kcm")
logger.addHandler(logging.NullHandler())

#: Bytes asked of a stream per read.
READ_SIZE = 65536
#: The writer joins queued groups into one write up to about this many bytes.
WRITE_COALESCE = 256 * 1024
#: Errors of streams no longer attached that may wait for a monitor; beyond
#: it the oldest are dropped (errors of attached streams are always kept).
ERROR_BACKLOG = 1024
#: Events that may wait for a monitor; beyond it the oldest are dropped.
EVENT_BACKLOG = 1024

_ACTIVE = StreamState.ACTIVE
_FAILED = StreamState.FAILED

# Streams attached to any mux in this process, by id (a stream is in at most
# one mux, as a TCP socket is in the kernel: EALREADY).  Weak, so that a mux
# that died mid-way can leave no stale entry behind.
_attached: weakref.WeakValueDictionary[int, AttachedStream] = weakref.WeakValueDictionary()


class _SendWaiter:
    __slots__ = ("batch", "messages", "nbytes", "target")

    def __init__(
        self,
        messages: list[bytes],
        nbytes: int,
        batch: _Batch | None,
        target: AttachedStream | None = None,
    ) -> None:
        self.messages = messages
        self.nbytes = nbytes
        self.batch = batch
        self.target = target  # send_to: the stream it must go on


def _collect(pending: deque[TxGroup]) -> tuple[list[TxGroup], int, bytes]:
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


def _shut_windows(streams: list[AttachedStream]) -> None:
    """The sending task passed its schedule point: its windows close (Mux._end_send)."""
    for stream in streams:
        stream._eager_window = False


def _split_pinned(groups: Iterable[TxGroup]) -> tuple[list[TxGroup], list[TxGroup]]:
    """``groups`` as (the policy's, those sent to their stream with ``send_to``)."""
    groups = list(groups)
    plain = [g for g in groups if not g.pinned]
    return plain, ([g for g in groups if g.pinned] if len(plain) < len(groups) else [])


def _lowest_free(used: set[int]) -> int:
    i = 0
    while i in used:
        i += 1
    used.add(i)
    return i


async def _reraise(exc: BaseException) -> None:
    raise exc


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
    ) -> None:
        self._parser = parser
        self._validator = Assembler(parser, max_message_size)
        self._rx_policy = rx_policy
        self._tx_policy = tx_policy
        # Only a policy that overrides written() needs each group timed.
        self._tx_timed = getattr(type(tx_policy), "written", None) is not Policy.written
        self._socket_type = socket_type
        self._max_message_size = max_message_size
        self._assembly_timeout = assembly_timeout
        self._receive_buffer_size = receive_buffer_size
        self._send_buffer_size = send_buffer_size
        self._auto_close = auto_close
        self._retry_in_doubt = retry_in_doubt
        self._close_timeout = close_timeout
        self._validate = validate
        # The outgoing check of one LengthPrefixed message, for _prepare:
        # (unpack_from, offset, adjust, smallest message), or None.
        fixed = self._validator._fixed if validate else None
        self._one_message: tuple[_Unpack, int, int, int] | None = (
            None if fixed is None else (*fixed, self._validator._min)
        )
        self._tx_stall_timeout = tx_stall_timeout
        self._nursery: trio.Nursery | None = None
        self._graceful = False  # closing after a normal exit: streams close gracefully
        self._closed = False  # no new sockets, sends or attaches
        self._finished = False  # all tasks are done
        self._shut_event = trio.Event()  # set when closing starts (for supervise)
        self._sockets: dict[KCMSocket, None] = {}
        self._socket_indices: set[int] = set()
        self._streams: dict[AttachedStream, None] = {}
        self._stream_indices: set[int] = set()
        # receive
        self._rx_candidates = 0
        self._rx_space = trio_util.RepeatedEvent()
        self._paused_readers = 0
        self._hold: deque[tuple[bytes, AttachedStream]] = deque()
        # transmit
        self._tx_candidates = 0
        self._tx_waiting: OrderedDict[KCMSocket, None] = OrderedDict()
        self._tx_outstanding = 0  # bytes accepted and not written (or given up)
        # Idle streams the sending task may write to at once (_write_eagerly);
        # noted only while a send method is accepting (_eager_ok).
        self._eager: list[AttachedStream] = []
        self._eager_ok = False
        # Streams a sending task wrote to itself, until its next schedule
        # point (_end_send): sends to them meanwhile go through the writer.
        self._windows: list[AttachedStream] = []
        self._tx_progress: trio.Event | None = None
        # errors
        self._errors: deque[StreamError] = deque()
        self._error_lot = trio.lowlevel.ParkingLot()
        self._events: deque[MuxEvent] = deque()
        self._event_lot = trio.lowlevel.ParkingLot()
        # counters
        self._rx_msgs = 0
        self._rx_bytes = 0
        self._tx_msgs = 0
        self._tx_bytes = 0
        self._tx_retries = 0
        self._rx_ready_drops = 0
        self._tx_dropped = 0
        self._psock_attach = 0
        self._psock_unattach = 0
        self._stream_errors = 0
        self._errors_dropped = 0
        self._events_dropped = 0

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
        return tuple(self._streams)

    def socket(
        self, *, receive_buffer_size: int | None = None, send_buffer_size: int | None = None
    ) -> KCMSocket:
        """Open a new KCM socket on this mux.

        Args:
          receive_buffer_size: Bytes of received messages it may queue; the
            mux's ``receive_buffer_size`` by default.
          send_buffer_size: Bytes of accepted, unwritten messages it may hold;
            the mux's ``send_buffer_size`` by default.

        Raises:
          trio.ClosedResourceError: The mux is closed.
          ValueError: A size is below 1.

        """
        if self._closed:
            raise trio.ClosedResourceError("the mux is closed")
        rbs = self._receive_buffer_size if receive_buffer_size is None else receive_buffer_size
        sbs = self._send_buffer_size if send_buffer_size is None else send_buffer_size
        if rbs < 1 or sbs < 1:
            raise ValueError("buffer sizes must be >= 1")
        sock = KCMSocket(self, _lowest_free(self._socket_indices), rbs, sbs)
        self._sockets[sock] = None
        try:
            self._add_rx_candidate(sock)
        except BaseException as exc:
            self._crash(exc)
            raise
        return sock

    def attach(
        self,
        stream: trio.abc.Stream,
        *,
        parser: ParserLike | None = None,
        max_message_size: int | None = None,
        assembly_timeout: float | None = None,
    ) -> AttachedStream:
        """Attach ``stream`` to the mux (the kernel's ``SIOCKCMATTACH``).

        From now on the mux owns the stream: a reader task splits what it
        receives into messages for the sockets, a writer task writes the
        messages the transmit policy gives it.  The stream must sit at a
        message boundary (any handshake done).  It is offered for transmit at
        once, and bytes it already buffered are parsed.

        Args:
          stream: Any :class:`trio.abc.Stream`: a TCP or Unix
            :class:`trio.SocketStream`, a :class:`trio.SSLStream`, an
            in-memory stream.
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
        if self._closed or self._nursery is None:
            raise trio.ClosedResourceError("the mux is closed")
        other = _attached.get(id(stream))
        if other is not None and other._stream is stream and not other._released:
            raise ValueError(f"{stream!r} is already attached to a mux")
        p = self._parser if parser is None else as_parser(parser)
        mms = self._max_message_size if max_message_size is None else max_message_size
        timeout = self._assembly_timeout if assembly_timeout is None else assembly_timeout
        _check_timeout(timeout, "assembly_timeout")
        handle = AttachedStream(self, stream, p, _lowest_free(self._stream_indices), mms, timeout)
        _attached[id(stream)] = handle
        self._streams[handle] = None
        self._psock_attach += 1
        self._nursery.start_soon(self._run_stream, handle)
        try:
            self._add_tx_candidate(handle)
        except BaseException as exc:
            self._crash(exc)
            raise
        self._event(StreamAttached(handle, trio.current_time()))
        logger.info("attached %r", handle)
        return handle

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
        if handle._mux is not self:
            raise ValueError(f"{handle!r} is not attached to this mux")
        if handle._state is StreamState.UNATTACHED:
            raise ValueError(f"{handle!r} was already unattached")
        if self._finished:
            raise trio.ClosedResourceError("the mux is closed: it closed its streams")
        if handle._state is _ACTIVE:
            if handle._unattaching:
                raise trio.BusyResourceError(f"{handle!r} is already being unattached")
            handle._unattaching = True
            try:
                self._remove_tx_candidate(handle)
                # Messages sent to it with send_to stay: they are written first.
                self._requeue_tx(self._take_pending(handle, pinned=False))
                self._reject_senders_to(handle)
            except BaseException as exc:
                self._crash(exc)
                raise
            handle._reader_scope.cancel()
            handle._writer_lot.unpark_all()
            if handle._inflight is None and not handle._tx_pending:
                # No write to wait for: the tasks end at their next checkpoint.
                with trio.CancelScope(shield=True):
                    await handle._done.wait()
            else:
                try:
                    await handle._done.wait()
                except trio.Cancelled:
                    if handle._inflight is not None and not handle._done.is_set():
                        try:
                            self._fail(
                                handle, _errno.EPIPE, "unattach was cancelled during a write"
                            )
                        except BaseException as exc:
                            self._crash(exc)
                        raise
                    # The write ended as the cancel came: nothing is in doubt, and
                    # the stream's tasks leave it open for us (or already have),
                    # so finish as with no write in flight.  The cancellation
                    # stays pending for the caller's next checkpoint.
                    with trio.CancelScope(shield=True):
                        await handle._done.wait()
            if handle._state is _ACTIVE:
                handle._state = StreamState.UNATTACHED
                handle._unread = handle._assembler.take_partial()
                try:
                    self._hold_messages(handle)
                except BaseException as exc:
                    self._crash(exc)
                    raise
                self._release_stream(handle, closed=False)
                logger.info("unattached %r", handle)
                return handle._stream
        await handle._done.wait()
        self._release_stream(handle, closed=False)
        return handle._stream

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
            connect,
            count=count,
            backoff=backoff,
            connect_timeout=connect_timeout,
            task_status=task_status,
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
        return _Feed(self, self._errors, self._error_lot)

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
        return _Feed(self, self._events, self._event_lot)

    def statistics(self) -> MuxStatistics:
        """Return a snapshot of the mux's counters."""
        return MuxStatistics(
            rx_msgs=self._rx_msgs,
            rx_bytes=self._rx_bytes,
            tx_msgs=self._tx_msgs,
            tx_bytes=self._tx_bytes,
            tx_retries=self._tx_retries,
            rx_ready_drops=self._rx_ready_drops,
            tx_dropped=self._tx_dropped,
            psock_attach=self._psock_attach,
            psock_unattach=self._psock_unattach,
            streams=len(self._streams),
            sockets=len(self._sockets),
            stream_errors=self._stream_errors,
            errors_dropped=self._errors_dropped,
            events_dropped=self._events_dropped,
        )

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<trio_kcm.Mux{state} sockets={len(self._sockets)} streams={len(self._streams)}>"

    # ------------------------------------------------------------------------
    # policy bugs: raised where they happen, and out of open_mux

    def _crash(self, exc: BaseException) -> None:
        """A policy raised in a user's task: make it propagate out of open_mux too."""
        if isinstance(exc, (trio.Cancelled, KeyboardInterrupt)):
            return
        if self._nursery is not None and not self._finished:
            try:
                self._nursery.start_soon(_reraise, exc)
            except RuntimeError:  # pragma: no cover - the nursery is closing
                pass

    # ------------------------------------------------------------------------
    # transmit: accepting

    def _prepare(self, message: bytes) -> bytes:
        one = self._one_message
        if one is not None and type(message) is bytes:
            # The common case inline: one LengthPrefixed message, as bytes.
            n = len(message)
            if one[3] <= n <= self._max_message_size and one[0](message, one[1])[0] + one[2] == n:
                return message
        return self._prepare_any(message)

    def _prepare_any(self, message: bytes) -> bytes:
        if type(message) is bytes:
            n = len(message)
        else:
            if isinstance(message, str):
                raise TypeError("messages are bytes, not str")
            # memoryview: only the buffer protocol (bytes(12) would be 12 zeros).
            view = memoryview(message)
            n = view.nbytes
            if n <= self._max_message_size:
                message = view.tobytes()
        if n > self._max_message_size:
            raise OSError(
                _errno.EMSGSIZE,
                f"message of {n} bytes is larger than max_message_size={self._max_message_size}",
            )
        if not n:
            raise ValueError("KCM cannot send an empty message")
        if self._validate and not self._validator.is_whole(message):
            self._check_outgoing(message)
        return message

    def _prepare_many(self, messages: Iterable[bytes]) -> tuple[list[bytes], int]:
        if isinstance(messages, (bytes, bytearray, memoryview, str)):
            raise TypeError("send_many takes an iterable of messages, not one message")
        one = self._one_message
        if one is None:
            prepared = [self._prepare(m) for m in messages]
            return prepared, sum(map(len, prepared))
        # The common case inline (LengthPrefixed, bytes, one message each);
        # anything else goes through _prepare, which checks and explains.
        unpack_from, offset, adjust, lowest = one
        highest = self._max_message_size
        prepare = self._prepare
        prepared = []
        append = prepared.append
        nbytes = 0
        for m in messages:
            n = len(m) if type(m) is bytes else -1
            if not (lowest <= n <= highest and unpack_from(m, offset)[0] + adjust == n):
                m = prepare(m)
                n = len(m)
            append(m)
            nbytes += n
        return prepared, nbytes

    def _check_outgoing(self, message: bytes) -> None:
        """Refuse a message that is not a sequence of complete messages.

        The same assembler rules as for incoming bytes, so what a peer would
        refuse is refused here, before a byte of it is written.
        """
        validator = self._validator
        try:
            validator.feed(message)
        except AssemblyError as exc:
            raise BadMessage(f"not a valid message: {exc}") from (exc.__cause__ or exc)
        if validator.partial_size:
            left = validator.take_partial()
            raise BadMessage(
                f"incomplete message: {len(left)} bytes at offset {len(message) - len(left)}"
                " do not make a whole message"
            )

    def _try_send(self, sock: KCMSocket, messages: list[bytes], nbytes: int) -> bool:
        """Accept a group now if the buffer allows; False if the sender must wait."""
        if sock._closed:
            raise trio.ClosedResourceError("the KCM socket is closed")
        batch = sock._batches.get(trio.lowlevel.current_task()) if sock._batches else None
        try:
            if sock._tx_waiters or sock._tx_queued_bytes >= sock._tx_limit:
                if batch is None or not batch.messages:
                    return False
                # Flush what the batch gathered before waiting for memory.
                self._flush_batch(sock, batch)
                if sock._tx_waiters or sock._tx_queued_bytes >= sock._tx_limit:
                    return False
            self._accept(sock, messages, nbytes, batch)
        except BaseException as exc:
            self._crash(exc)
            raise
        return True

    async def _wait_send(
        self,
        sock: KCMSocket,
        messages: list[bytes],
        nbytes: int,
        target: AttachedStream | None = None,
    ) -> None:
        task = trio.lowlevel.current_task()
        # send_to is not held by batch().
        batch = sock._batches.get(task) if target is None and sock._batches else None
        sock._tx_waiters[task] = _SendWaiter(messages, nbytes, batch, target)

        def abort(_: object) -> trio.lowlevel.Abort:
            # Not accepted yet: withdrawing is leaving the line.
            sock._tx_waiters.pop(task, None)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def _count_accepted(self, sock: KCMSocket, n: int, nbytes: int) -> None:
        """``n`` messages of ``nbytes`` in all enter ``sock``'s send buffer."""
        sock._tx_queued_bytes += nbytes
        sock._tx_queued_msgs += n
        sock._tx_msgs += n
        sock._tx_bytes += nbytes
        self._tx_outstanding += nbytes

    def _accept(
        self, sock: KCMSocket, messages: list[bytes], nbytes: int, batch: _Batch | None
    ) -> None:
        self._count_accepted(sock, len(messages), nbytes)
        if batch is not None:
            batch.messages.extend(messages)
            batch.nbytes += nbytes
        else:
            self._dispatch(sock, TxGroup(sock, messages, nbytes))

    def _flush_batch(self, sock: KCMSocket, batch: _Batch) -> None:
        if batch.messages:
            group = TxGroup(sock, batch.messages, batch.nbytes)
            batch.messages = []
            batch.nbytes = 0
            try:
                self._dispatch(sock, group)
            except BaseException as exc:
                self._crash(exc)
                raise

    def _wake_senders(self, sock: KCMSocket) -> None:
        """Hand freed send-buffer space to waiting senders, first come first served."""
        waiters = sock._tx_waiters
        while waiters and sock._tx_queued_bytes < sock._tx_limit:
            task, waiter = waiters.popitem(last=False)
            target = waiter.target
            if target is None:
                self._accept(sock, waiter.messages, waiter.nbytes, waiter.batch)
            else:
                try:
                    self._check_target(target)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    trio.lowlevel.reschedule(task, outcome.Error(exc))
                    continue
                self._accept_to(sock, target, waiter.messages, waiter.nbytes)
            trio.lowlevel.reschedule(task)

    # ------------------------------------------------------------------------
    # transmit: pinned to a stream (send_to)

    def _check_target(self, handle: AttachedStream) -> None:
        """Raise the error ``send_to`` gives for a handle it cannot send on."""
        if handle._mux is not self:
            raise ValueError(f"{handle!r} is not attached to this mux")
        if handle._state is _FAILED:
            raise trio.BrokenResourceError(f"{handle!r} failed") from handle._error
        if handle._state is not _ACTIVE or handle._unattaching or handle._released:
            raise trio.ClosedResourceError(f"{handle!r} was unattached")

    def _try_send_to(
        self, sock: KCMSocket, handle: AttachedStream, messages: list[bytes], nbytes: int
    ) -> bool:
        """Accept a pinned group now if the buffer allows; False if the sender must wait."""
        if sock._closed:
            raise trio.ClosedResourceError("the KCM socket is closed")
        self._check_target(handle)
        if sock._tx_waiters or sock._tx_queued_bytes >= sock._tx_limit:
            return False
        self._accept_to(sock, handle, messages, nbytes)
        return True

    def _accept_to(
        self, sock: KCMSocket, handle: AttachedStream, messages: list[bytes], nbytes: int
    ) -> None:
        """Accept a group for ``handle``: queued there, whatever the policy thinks.

        The policy neither picks it nor hears of it (no ``written``, no
        ``released``); its bytes count in ``handle.tx_queued_bytes``.
        """
        n = len(messages)
        self._count_accepted(sock, n, nbytes)
        # Not timed: the policy never hears of it (picked_at is for written()).
        handle._tx_pending.append(PinnedTxGroup(sock, messages, nbytes))
        handle._tx_queued_bytes += nbytes
        handle._tx_queued_msgs += n
        self._wake_writer(handle)

    def _reject_senders_to(self, handle: AttachedStream) -> None:
        """Senders waiting to send_to a handle that just failed or is leaving get its error."""
        for sock in list(self._sockets):
            waiters = sock._tx_waiters
            if not waiters:
                continue
            for task, waiter in list(waiters.items()):
                if waiter.target is handle:
                    del waiters[task]
                    try:
                        self._check_target(handle)
                    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                        trio.lowlevel.reschedule(task, outcome.Error(exc))
            # Those that were behind them may fit now.
            if waiters:
                self._wake_senders(sock)

    # ------------------------------------------------------------------------
    # transmit: scheduling

    def _dispatch(self, sock: KCMSocket, group: TxGroup) -> None:
        if sock._tx_queue or not self._tx_candidates:
            # Keep the socket's order: behind what already waits for a stream.
            sock._tx_queue.append(group)
            self._tx_waiting[sock] = None
            if self._tx_candidates:
                self._drain_tx_queue(sock)
            return
        stream = self._tx_policy.pick_stream(sock, group.messages, group.nbytes)
        if stream is None:
            sock._tx_queue.append(group)
            self._tx_waiting[sock] = None
            return
        self._assign(stream, group)

    def _assign(self, stream: AttachedStream, group: TxGroup) -> None:
        if not stream._tx_candidate:
            raise RuntimeError(
                f"policy {self._tx_policy!r} picked {stream!r}, which is not a transmit candidate"
            )
        if self._tx_timed:
            group.picked_at = trio.current_time()
        stream._tx_pending.append(group)
        stream._tx_queued_bytes += group.nbytes
        stream._tx_queued_msgs += len(group.messages)
        owners = stream._owners
        sock = group.sock
        count = owners.get(sock, 0)
        if not count:
            stream._reserved += 1
        owners[sock] = count + 1
        self._wake_writer(stream)

    def _send_now(
        self,
        sock: KCMSocket,
        messages: list[bytes],
        nbytes: int,
        target: AttachedStream | None = None,
    ) -> bool:
        """Accept a group now if the buffer allows (False: the sender must wait).

        For the async send methods: what this queued on an idle TCP stream is
        then written at once, from the sending task (:meth:`_write_eagerly`).
        """
        accepted = False
        self._eager_ok = True
        try:
            if target is None:
                accepted = self._try_send(sock, messages, nbytes)
            else:
                accepted = self._try_send_to(sock, target, messages, nbytes)
        finally:
            self._eager_ok = False
            if self._eager:
                self._write_eagerly()
            if not accepted and self._windows:
                # The sender will wait (or raise): a schedule point anyway.
                self._close_windows()
        return accepted

    async def _end_send(self) -> None:
        """An accepted send's schedule point; then the windows it opened close.

        A stream the sending task wrote to itself (:meth:`_write_eagerly`)
        keeps a *window* open until then: sends to it from other tasks in the
        meantime (the same run of the scheduler, typically) are queued and
        wake its writer, which writes them all together, rather than each
        making a write of its own.
        """
        if not self._windows:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        opened, self._windows = self._windows, []
        try:
            await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            _shut_windows(opened)

    def _close_windows(self) -> None:
        """Close the windows of a send that has no schedule point (in ``batch()``)."""
        opened, self._windows = self._windows, []
        _shut_windows(opened)

    def _wake_writer(self, stream: AttachedStream) -> None:
        lot = stream._writer_lot
        if lot:
            if self._eager_ok and not stream._eager_window and stream._eager_send is not None:
                # The writer is idle: the sending task writes at once
                # (_write_eagerly), and wakes the writer only if it must.
                self._eager.append(stream)
            else:
                lot.unpark()

    def _write_eagerly(self) -> None:
        """Write, from the sending task, what was just queued on idle streams.

        Called by :meth:`_send_now` right after it tried to accept, whatever
        came of it: a stream noted here was not woken, so its writer is woken
        now unless this writes all it has.  A write that the kernel takes whole
        is done here and then, and opens a window (see :meth:`_end_send`);
        what the kernel does not take is left to the stream's writer task,
        which finishes that write before any other (so the message stays
        whole).  An error is left to the writer too: it will meet it again and
        fail the stream as usual.
        """
        eager = self._eager
        try:
            while eager:
                stream = eager.pop()
                pending = stream._tx_pending
                if (
                    not pending
                    or stream._inflight is not None
                    or stream._state is not _ACTIVE
                    or stream._unattaching
                    or stream._eager_send is None
                ):
                    if pending and stream._writer_lot:
                        stream._writer_lot.unpark()
                    continue
                groups, size, data = _collect(pending)
                stream._inflight = groups
                try:
                    sent = stream._eager_send(data)
                except OSError:  # BlockingIOError included
                    sent = 0
                if sent == len(data):
                    stream._inflight = None
                    stream._eager_window = True
                    self._windows.append(stream)
                    self._written(stream, groups, size)
                else:
                    stream._rest = (memoryview(data)[sent:], size)
                    if stream._writer_lot:
                        stream._writer_lot.unpark()
        except BaseException as exc:
            for stream in eager:
                if stream._writer_lot:
                    stream._writer_lot.unpark()
            eager.clear()
            self._crash(exc)
            raise

    def _drain_tx_queue(self, sock: KCMSocket) -> bool:
        """Dispatch a socket's waiting groups in order; True if none is left."""
        queue = sock._tx_queue
        pick = self._tx_policy.pick_stream
        while queue:
            group = queue[0]
            stream = pick(sock, group.messages, group.nbytes)
            if stream is None:
                return False
            queue.popleft()
            self._assign(stream, group)
        self._tx_waiting.pop(sock, None)
        return True

    def _dispatch_waiting(self) -> None:
        if self._tx_candidates:
            for sock in list(self._tx_waiting):
                self._drain_tx_queue(sock)

    def _take_pending(self, stream: AttachedStream, *, pinned: bool = True) -> list[TxGroup]:
        """Remove the groups queued on a stream that are not being written.

        With ``pinned=False``, groups sent to it with ``send_to`` stay.
        """
        pending = stream._tx_pending  # in place: the writer holds it
        if pinned:
            groups = list(pending)
            pending.clear()
        else:
            groups, keep = _split_pinned(pending)
            pending.clear()
            pending.extend(keep)
        for group in groups:
            stream._tx_queued_bytes -= group.nbytes
            stream._tx_queued_msgs -= len(group.messages)
        return groups

    def _requeue_tx(self, groups: list[TxGroup]) -> None:
        """Put groups back at the head of their sockets' queues and pick again."""
        if not groups:
            return
        for group in reversed(groups):
            group.sock._tx_queue.appendleft(group)
            self._tx_waiting[group.sock] = None
            self._tx_retries += len(group.messages)
        self._dispatch_waiting()

    def _add_tx_candidate(self, stream: AttachedStream) -> None:
        """The policy gets the stream (again); messages waiting for one go out."""
        stream._tx_candidate = True
        self._tx_candidates += 1
        self._tx_policy.stream_added(stream)
        self._dispatch_waiting()

    def _remove_tx_candidate(self, stream: AttachedStream) -> None:
        if stream._tx_candidate:
            stream._tx_candidate = False
            self._tx_candidates -= 1
            stream._unreserved += len(stream._owners)
            stream._owners.clear()
            self._tx_policy.stream_removed(stream)
            if self._tx_progress is not None:
                self._tx_progress.set()

    def _give_up_tx(self, groups: list[TxGroup]) -> None:
        """Messages that will not be sent: free their buffer space."""
        for group in groups:
            sock = group.sock
            sock._tx_queued_bytes -= group.nbytes
            sock._tx_queued_msgs -= len(group.messages)
            self._tx_outstanding -= group.nbytes
            if sock._tx_waiters:
                self._wake_senders(sock)

    # ------------------------------------------------------------------------
    # transmit: the writer task

    async def _writer(self, stream: AttachedStream) -> None:
        pending = stream._tx_pending
        transport = stream._stream
        while True:
            data: bytes | memoryview
            if stream._rest is not None:
                # The rest of a write the sending task began (_write_eagerly).
                data, size = stream._rest
                stream._rest = None
                groups = stream._inflight
                assert groups is not None
            elif not pending:
                if stream._unattaching:
                    return
                await stream._writer_lot.park()
                stream._eager_window = False
                continue
            else:
                groups, size, data = _collect(pending)
                stream._inflight = groups
            try:
                await transport.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self._fail(stream, _errno.EPIPE, f"write failed: {exc!r}", cause=exc)
                return
            if stream._inflight is not groups:
                # The stream failed meanwhile; _fail took these as in doubt.
                return
            stream._inflight = None
            self._written(stream, groups, size)

    # ------------------------------------------------------------------------
    # transmit: stalls (tx_stall_timeout)

    async def _watched_writer(self, stream: AttachedStream) -> None:
        """The writer, and beside it a watchdog that ends with it."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._stall_watchdog, stream)
            await self._writer(stream)
            nursery.cancel_scope.cancel()

    async def _stall_watchdog(self, stream: AttachedStream) -> None:
        """Look at the write in flight every quarter of ``tx_stall_timeout``.

        The writer is not touched: a write is the ``_inflight`` list object, and
        one seen at two looks ``timeout`` apart has made no progress for at
        least that long.  A stall is seen between ``timeout`` and 1.25 times
        ``timeout`` after the write started.
        """
        timeout = self._tx_stall_timeout
        assert timeout is not None
        period = timeout / 4
        seen: list[TxGroup] | None = None
        seen_at = 0.0
        while True:
            await trio.sleep(period)
            now = trio.current_time()
            inflight = stream._inflight
            if inflight is not seen:
                seen, seen_at = inflight, now
                if stream._stalled_at is not None:
                    self._resume(stream, now)
            elif (
                inflight is not None
                and stream._stalled_at is None
                and stream._tx_candidate
                and now - seen_at >= timeout
            ):
                self._stall(stream, now)

    def _stall(self, stream: AttachedStream, now: float) -> None:
        """No new messages for a stalled stream; those not started move away."""
        stream._stalled_at = now
        try:
            self._remove_tx_candidate(stream)
            moved = self._take_pending(stream, pinned=False)
            self._event(StreamStalled(stream, sum(len(g.messages) for g in moved), now))
            self._requeue_tx(moved)
        except BaseException as exc:
            self._crash(exc)
            raise
        logger.warning("%r stalled: its write made no progress", stream)

    def _resume(self, stream: AttachedStream, now: float) -> None:
        """The stalled write completed: the policy gets the stream again."""
        stalled_at = stream._stalled_at
        assert stalled_at is not None
        stream._stalled_at = None
        if stream._state is not _ACTIVE or stream._unattaching:
            return
        try:
            self._event(StreamResumed(stream, now - stalled_at, now))
            self._add_tx_candidate(stream)
        except BaseException as exc:
            self._crash(exc)
            raise
        if self._tx_progress is not None:
            self._tx_progress.set()
        logger.info("%r resumed", stream)

    def _stalled_writes(self) -> bool:
        return any(s._stalled_at is not None and s._inflight for s in self._streams)

    def _written(self, stream: AttachedStream, groups: list[TxGroup], size: int) -> None:
        timed = self._tx_timed
        now = trio.current_time() if timed else 0.0
        nmsgs = 0
        policy = self._tx_policy
        owners = stream._owners
        candidate = stream._tx_candidate
        stream._tx_queued_bytes -= size
        stream._tx_bytes += size
        self._tx_bytes += size
        self._tx_outstanding -= size
        for group in groups:
            sock = group.sock
            n = len(group.messages)
            nmsgs += n
            sock._tx_queued_bytes -= group.nbytes
            sock._tx_queued_msgs -= n
            # The policy hears nothing more of a removed stream, nor of send_to.
            if candidate and not group.pinned:
                if timed:
                    policy.written(stream, sock, group.nbytes, now - group.picked_at)
                count = owners[sock] - 1
                if count:
                    owners[sock] = count
                else:
                    del owners[sock]
                    stream._unreserved += 1
                    policy.released(stream, sock)
            if sock._tx_waiters:
                self._wake_senders(sock)
        stream._tx_queued_msgs -= nmsgs
        stream._tx_msgs += nmsgs
        self._tx_msgs += nmsgs
        if self._tx_waiting:
            self._dispatch_waiting()
        if self._tx_progress is not None:
            self._tx_progress.set()

    # ------------------------------------------------------------------------
    # receive: steering

    def _add_rx_candidate(self, sock: KCMSocket) -> None:
        sock._rx_candidate = True
        self._rx_candidates += 1
        self._rx_policy.socket_added(sock)
        if self._hold:
            self._steer_hold()
        if self._paused_readers and self._rx_candidates:
            self._rx_space.set()

    def _remove_rx_candidate(self, sock: KCMSocket) -> None:
        if sock._rx_candidate:
            sock._rx_candidate = False
            self._rx_candidates -= 1
            self._rx_policy.socket_removed(sock)

    def _deliver(self, sock: KCMSocket | None, message: bytes, origin: AttachedStream) -> None:
        if sock is None or not sock._rx_candidate:
            raise RuntimeError(
                f"policy {self._rx_policy!r} picked {sock!r}, which is not a receive candidate"
            )
        sock._rx_queue.append((message, origin))
        queued = sock._rx_queued_bytes + len(message)
        sock._rx_queued_bytes = queued
        if sock._rx_waiters:
            trio.lowlevel.reschedule(sock._rx_waiters.popleft())
        if queued >= sock._rx_limit:
            self._remove_rx_candidate(sock)

    def _steer(self, origin: AttachedStream, messages: list[bytes]) -> int:
        """Deliver one read's messages; return how many found a socket."""
        policy = self._rx_policy
        if policy.batch_affine and len(messages) > 1:
            return self._steer_runs(origin, messages)
        i = 0
        n = len(messages)
        pick = policy.pick_socket
        reschedule = trio.lowlevel.reschedule
        # _deliver, inline: this loop runs once per message received.
        while i < n and self._rx_candidates:
            message = messages[i]
            sock = pick(origin, message)
            if sock is None:
                break
            if not sock._rx_candidate:
                self._deliver(sock, message, origin)  # raises the policy's error
            sock._rx_queue.append((message, origin))
            queued = sock._rx_queued_bytes + len(message)
            sock._rx_queued_bytes = queued
            if sock._rx_waiters:
                reschedule(sock._rx_waiters.popleft())
            if queued >= sock._rx_limit:
                self._remove_rx_candidate(sock)
            i += 1
        policy.read_done(origin)
        return i

    def _steer_runs(self, origin: AttachedStream, messages: list[bytes]) -> int:
        """:meth:`_steer` for a batch-affine policy: one pick per run of messages.

        A run is what the picked socket takes before it is full: messages
        while its queued bytes are below its limit, the one reaching the limit
        included (as one message at a time would go).  It is delivered with C
        loops: sizes summed by ``accumulate``, the end found by ``bisect``.
        """
        i = 0
        n = len(messages)
        policy = self._rx_policy
        reschedule = trio.lowlevel.reschedule
        while i < n and self._rx_candidates:
            sock = policy.pick_socket(origin, messages[i])
            if sock is None:
                break
            if not sock._rx_candidate:
                self._deliver(sock, messages[i], origin)  # raises the policy's error
            run = messages[i:] if i else messages
            sizes = list(itertools.accumulate(map(len, run)))
            room = sock._rx_limit - sock._rx_queued_bytes
            count = bisect.bisect_left(sizes, room) + 1
            if count < len(run):
                run = run[:count]
            else:
                count = len(run)
            sock._rx_queue.extend(zip(run, itertools.repeat(origin)))
            queued = sock._rx_queued_bytes + sizes[count - 1]
            sock._rx_queued_bytes = queued
            waiters = sock._rx_waiters
            for _ in range(min(count, len(waiters))):
                reschedule(waiters.popleft())
            if queued >= sock._rx_limit:
                self._remove_rx_candidate(sock)
            i += count
        policy.read_done(origin)
        return i

    def _steer_hold(self) -> None:
        hold = self._hold
        policy = self._rx_policy
        while hold and self._rx_candidates:
            message, origin = hold[0]
            sock = policy.pick_socket(None, message)
            if sock is None:
                break
            hold.popleft()
            self._deliver(sock, message, origin)
        policy.read_done(None)

    def _hold_messages(self, stream: AttachedStream) -> None:
        """A stream leaves: its complete, undelivered messages wait in the mux."""
        if stream._held:
            self._hold.extend((m, stream) for m in stream._held)
            stream._held = []
            self._steer_hold()

    def _take(self, sock: KCMSocket, max_messages: int) -> list[bytes]:
        queue = sock._rx_queue
        if max_messages == 1 or len(queue) == 1:
            message = queue.popleft()[0]
            out = [message]
            nbytes = len(message)
        elif max_messages >= len(queue):
            out = list(map(_first, queue))  # all of it, in C
            queue.clear()
            nbytes = sum(map(len, out))
        else:
            out = [queue.popleft()[0] for _ in range(max_messages)]
            nbytes = sum(map(len, out))
        sock._rx_queued_bytes -= nbytes
        sock._rx_msgs += len(out)
        sock._rx_bytes += nbytes
        try:
            self._rx_policy.socket_drained(sock, nbytes)
            # A full socket comes back below half its buffer (the kernel waits
            # for rcvlowat, by default empty): coming back at the first free
            # byte would wake a paused reader for every message taken.
            if (
                not sock._rx_candidate
                and sock._receive_enabled
                and not sock._closed
                and sock._rx_queued_bytes <= sock._rx_limit >> 1
            ):
                self._add_rx_candidate(sock)
        except BaseException as exc:
            self._crash(exc)
            raise
        return out

    def _take_from(self, sock: KCMSocket, max_messages: int) -> list[tuple[bytes, AttachedStream]]:
        """``_take``, with the stream each message came on."""
        origins = [o for _, o in itertools.islice(sock._rx_queue, max_messages)]
        return list(zip(self._take(sock, max_messages), origins, strict=True))

    def _move_rx_queue(self, sock: KCMSocket) -> None:
        """A socket stops receiving: its queued messages go to the others."""
        self._remove_rx_candidate(sock)
        if sock._rx_queue:
            entries = list(sock._rx_queue)
            sock._rx_queue.clear()
            nbytes = sock._rx_queued_bytes
            sock._rx_queued_bytes = 0
            self._rx_policy.socket_drained(sock, nbytes)
            # Ahead of messages that were already waiting in the mux.
            self._hold.extendleft(reversed(entries))
            self._steer_hold()

    def _disable_receive(self, sock: KCMSocket) -> None:
        sock._receive_enabled = False
        try:
            self._move_rx_queue(sock)
        except BaseException as exc:
            self._crash(exc)
            raise

    def _enable_receive(self, sock: KCMSocket) -> None:
        sock._receive_enabled = True
        try:
            if sock._rx_queued_bytes < sock._rx_limit:
                self._add_rx_candidate(sock)
        except BaseException as exc:
            self._crash(exc)
            raise

    def _close_socket(self, sock: KCMSocket) -> None:
        if sock._closed:
            return
        sock._closed = True
        sock._tx_parts = sock._rx_rests = None  # SEQPACKET: unfinished messages are dropped
        self._sockets.pop(sock, None)
        self._socket_indices.discard(sock._index)
        while sock._rx_waiters:
            trio.lowlevel.reschedule(sock._rx_waiters.popleft(), _closed_error())
        while sock._tx_waiters:
            task, _ = sock._tx_waiters.popitem(last=False)
            trio.lowlevel.reschedule(task, _closed_error())
        try:
            # Accepted messages still go out, batches included.
            for batch in list(sock._batches.values()):
                self._flush_batch(sock, batch)
            self._move_rx_queue(sock)
        except BaseException as exc:
            self._crash(exc)
            raise

    # ------------------------------------------------------------------------
    # receive: the reader task

    async def _reader(self, stream: AttachedStream) -> None:
        transport = stream._stream
        assembler = stream._assembler
        timeout = stream._assembly_timeout
        with stream._reader_scope:
            while True:
                if stream._held:
                    held = stream._held
                    stream._held = []
                    done = self._steer(stream, held)
                    if done < len(held):
                        stream._held = held[done:]
                        await self._pause(stream)
                        if stream._state is not _ACTIVE:
                            return
                        continue
                try:
                    if timeout is None or stream._deadline == math.inf:
                        data = await transport.receive_some(READ_SIZE)
                    else:
                        with trio.move_on_at(stream._deadline) as deadline_scope:
                            data = await transport.receive_some(READ_SIZE)
                        if deadline_scope.cancelled_caught:
                            stream._rx_msg_timeouts += 1
                            self._fail(
                                stream,
                                _errno.ETIMEDOUT,
                                f"a message took longer than assembly_timeout={timeout}s to arrive",
                            )
                            return
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    self._fail(stream, _errno.EPIPE, f"read failed: {exc!r}", cause=exc)
                    return
                if stream._state is not _ACTIVE:
                    # Another task failed the stream while this read completed:
                    # its partial message was already reported, and these bytes
                    # may start mid-message.  They are not parsed.
                    return
                if not data:
                    self._fail(stream, _errno.EPIPE, "end of stream (the peer closed it)")
                    return
                before = assembler.bytes
                try:
                    messages = assembler.feed(data)
                except AssemblyError as exc:
                    self._count_rx(exc.messages, assembler.bytes - before)
                    stream._held.extend(exc.messages)
                    self._fail(
                        stream, exc.errno, str(exc), partial=exc.partial, cause=exc.__cause__
                    )
                    return
                if timeout is not None:
                    if not assembler.partial_size:
                        stream._deadline = math.inf
                    elif messages or stream._deadline == math.inf:
                        # A new message started in this read.
                        stream._deadline = trio.current_time() + timeout
                if messages:
                    self._count_rx(messages, assembler.bytes - before)
                    done = self._steer(stream, messages)
                    if done < len(messages):
                        stream._held = messages[done:]

    def _count_rx(self, messages: list[bytes], nbytes: int) -> None:
        self._rx_msgs += len(messages)
        self._rx_bytes += nbytes

    async def _pause(self, stream: AttachedStream) -> None:
        """No socket has room: stop reading until one has (TCP backpressure)."""
        start = trio.current_time()
        stream._paused_since = start
        self._paused_readers += 1
        try:
            await self._rx_space.wait()
        finally:
            self._paused_readers -= 1
            stream._paused_since = None
            paused = trio.current_time() - start
            stream._rx_paused += paused
            # Time stopped by us does not count against the peer.
            stream._deadline += paused

    # ------------------------------------------------------------------------
    # stream lifecycle

    async def _run_stream(self, stream: AttachedStream) -> None:
        try:
            with stream._scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._reader, stream)
                    if self._tx_stall_timeout is None:
                        nursery.start_soon(self._writer, stream)
                    else:
                        nursery.start_soon(self._watched_writer, stream)
        finally:
            # The mux owns the stream until unattach: it closes it when the mux
            # closes or dies (its nursery was cancelled), and on failure if
            # auto_close.
            closing = self._closed or (
                self._nursery is not None and self._nursery.cancel_scope.cancel_called
            )
            if stream._state is _FAILED:
                close = self._auto_close or closing
            else:
                close = closing and not stream._unattaching
            try:
                if close and not stream._released:
                    self._release_stream(stream, closed=True)
                    await self._close_stream(stream, graceful=self._graceful)
            finally:
                stream._done.set()

    async def _close_stream(self, stream: AttachedStream, *, graceful: bool) -> None:
        """Close a stream the mux owns; a failure to close is logged, not raised."""
        with trio.CancelScope(shield=True):
            try:
                if stream._state is _ACTIVE and graceful:
                    with trio.move_on_after(self._close_timeout):
                        await stream._stream.aclose()
                await trio.aclose_forcefully(stream._stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                logger.warning("closing %r failed: %r", stream, exc)

    def _release_stream(self, stream: AttachedStream, *, closed: bool) -> None:
        if not stream._released:
            self._event(StreamUnattached(stream, closed, trio.current_time()))
            stream._released = True
            self._streams.pop(stream, None)
            self._stream_indices.discard(stream._index)
            if _attached.get(id(stream._stream)) is stream:
                del _attached[id(stream._stream)]
            self._psock_unattach += 1
            if self._tx_progress is not None:
                self._tx_progress.set()
            if len(self._errors) > ERROR_BACKLOG and not self._finished:
                self._trim_errors()

    def _fail(
        self,
        stream: AttachedStream,
        errno: int,
        message: str,
        *,
        cause: BaseException | None = None,
        partial: bytes | None = None,
    ) -> None:
        """Cut a stream off alone; report it; send its messages elsewhere."""
        if stream._state is not _ACTIVE:
            return
        stream._state = _FAILED
        self._stream_errors += 1
        self._remove_tx_candidate(stream)
        inflight = stream._inflight or []
        stream._inflight = None
        stream._rest = None
        if inflight:
            stream._tx_aborts += 1
            for group in inflight:
                stream._tx_queued_bytes -= group.nbytes
                stream._tx_queued_msgs -= len(group.messages)
        in_doubt = tuple(m for g in inflight for m in g.messages)
        retry = self._take_pending(stream)
        # Groups sent to this stream with send_to go nowhere else: those not
        # started are unsent, those in flight are in doubt; neither is retried.
        retry, lost = _split_pinned(retry)
        unsent = tuple(m for g in lost for m in g.messages)
        inflight, lost_inflight = _split_pinned(inflight)
        lost += lost_inflight
        if partial is None:
            partial = stream._assembler.take_partial()
        error = StreamError(
            errno,
            f"psock-{stream._index}: {message}",
            stream=stream,
            partial_bytes=partial,
            in_doubt=in_doubt,
            unsent=unsent,
        )
        error.__cause__ = cause
        stream._error = error
        if self._retry_in_doubt:
            self._requeue_tx(inflight + retry)
        else:
            # Requeue first: space freed by giving up wakes senders, whose
            # messages must queue behind the retried ones.
            self._requeue_tx(retry)
            self._give_up_tx(inflight)
        self._give_up_tx(lost)
        self._reject_senders_to(stream)
        self._hold_messages(stream)
        self._post(error)
        self._event(StreamFailed(stream, error, trio.current_time()))
        stream._scope.cancel()
        logger.warning("%r failed: %s", stream, error)

    def _post(self, error: StreamError) -> None:
        self._errors.append(error)
        self._trim_errors()
        self._error_lot.unpark()

    def _event(self, event: MuxEvent) -> None:
        events = self._events
        events.append(event)
        if len(events) > EVENT_BACKLOG:
            events.popleft()
            self._events_dropped += 1
        self._event_lot.unpark()

    def _trim_errors(self) -> None:
        """With nobody monitoring, keep memory bounded under stream churn.

        At most one error per attached stream, plus ERROR_BACKLOG errors of
        streams that are gone: beyond that the oldest of those are dropped
        (each was logged when it happened).
        """
        errors = self._errors
        while len(errors) > ERROR_BACKLOG + len(self._streams):
            for i, old in enumerate(errors):
                if old.stream._released:
                    del errors[i]
                    self._errors_dropped += 1
                    break
            else:  # pragma: no cover - one error per attached stream at most
                return

    # ------------------------------------------------------------------------
    # closing

    def _shut(self) -> None:
        """Closing starts: no new sockets, sends or attaches; sockets close."""
        self._closed = True
        self._shut_event.set()
        for sock in list(self._sockets):
            self._close_socket(sock)

    async def _flush(self) -> None:
        """Wait (up to close_timeout) until what was accepted is written."""
        self._graceful = True
        with trio.move_on_after(self._close_timeout):
            while self._tx_outstanding > 0 and (self._tx_candidates or self._stalled_writes()):
                self._tx_progress = trio.Event()
                await self._tx_progress.wait()
        self._tx_progress = None

    def _stop(self) -> None:
        """Count and log what could not be flushed or delivered; stop the streams."""
        dropped = sum(len(g.messages) for sock in self._tx_waiting for g in sock._tx_queue)
        for stream in self._streams:
            groups = list(stream._tx_pending) + list(stream._inflight or ())
            dropped += sum(len(g.messages) for g in groups)
        self._tx_dropped += dropped
        undelivered = len(self._hold) + sum(len(s._held) for s in self._streams)
        self._rx_ready_drops += undelivered
        if dropped or undelivered:
            logger.warning(
                "mux closed with %d accepted message(s) unsent and %d received message(s)"
                " undelivered",
                dropped,
                undelivered,
            )
        # A write cut short by closing is reported like any failed write: its
        # messages are in doubt.  Nothing is re-dispatched: no stream is left.
        streams = list(self._streams)
        for stream in streams:
            self._remove_tx_candidate(stream)
        for stream in streams:
            if stream._inflight:
                self._fail(stream, _errno.EPIPE, "the mux closed during a write")
            stream._scope.cancel()

    async def _finish(self) -> None:
        """All tasks are done: close the streams still attached, end the feeds.

        Left are failed streams nobody unattached (``auto_close=False``) and
        streams whose task died with a policy bug: the mux owns them until
        unattach, so it closes them.
        """
        self._finished = True
        self._closed = True
        self._shut_event.set()
        try:
            for stream in list(self._streams):
                self._release_stream(stream, closed=True)
                await self._close_stream(stream, graceful=False)
                stream._done.set()
        finally:
            self._error_lot.unpark_all()
            self._event_lot.unpark_all()


def _closed_error() -> outcome.Error:
    # A new exception for each task: a raised exception collects its traceback.
    return outcome.Error(trio.ClosedResourceError("the KCM socket was closed"))


_T = TypeVar("_T")


@final
class _Feed(Generic[_T]):
    """The async iterator returned by :meth:`Mux.errors` and :meth:`Mux.events`.

    Each item is taken once, by whichever task asks first; iteration ends once
    the mux has finished and the queue is empty.
    """

    __slots__ = ("_lot", "_mux", "_queue")

    def __init__(self, mux: Mux, queue: deque[_T], lot: trio.lowlevel.ParkingLot) -> None:
        self._mux = mux
        self._queue = queue
        self._lot = lot

    def __aiter__(self) -> _Feed[_T]:
        return self

    async def __anext__(self) -> _T:
        queue = self._queue
        await trio.lowlevel.checkpoint_if_cancelled()
        while not queue:
            if self._mux._finished:
                raise StopAsyncIteration
            await self._lot.park()
        item = queue.popleft()
        await trio.lowlevel.cancel_shielded_checkpoint()
        return item


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

    On a normal exit it closes every socket (tasks waiting in them get
    :exc:`trio.ClosedResourceError`), waits up to ``close_timeout`` for the
    accepted messages to be written, then closes the attached streams.  What
    could not be written is counted in :attr:`MuxStatistics.tx_dropped`, and
    received messages nobody took in :attr:`MuxStatistics.rx_ready_drops`; both
    are logged.  If the block raises, nothing is flushed: the streams are
    closed at once and the exception propagates unchanged.

    Raises:
      PolicyLoadError: A policy name is unknown or its plugin is broken.
      ValueError: An argument is out of range.
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
    base = resolve_policy(policy) if rx_policy is None or tx_policy is None else None
    rx = resolve_policy(rx_policy) if rx_policy is not None else base
    tx = resolve_policy(tx_policy) if tx_policy is not None else base
    assert rx is not None and tx is not None
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
    )
    body_exc: BaseException | None = None
    unwrap = False
    try:
        async with trio.open_nursery() as nursery:
            mux._nursery = nursery
            try:
                yield mux
            except BaseException as exc:
                body_exc = exc
                mux._shut()
                mux._stop()
                nursery.cancel_scope.cancel()
                raise
            try:
                mux._shut()
                await mux._flush()
            except BaseException as exc:
                body_exc = exc
                nursery.cancel_scope.cancel()
                raise
            finally:
                mux._stop()
            # The streams close themselves as their tasks end (see _run_stream).
    except BaseExceptionGroup as group:
        # The body's own exception alone comes out as itself, not in a group.
        if body_exc is not None and _only(group, body_exc):
            unwrap = True
        else:
            raise
    finally:
        await mux._finish()
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
