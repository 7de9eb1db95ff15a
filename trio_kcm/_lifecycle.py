"""The life of attached streams: attach, the task tree, failure, stalls, release.

Each attached stream runs in the mux's nursery as one task, :meth:`Lifecycle.run`,
inside the stream's own cancel scope, with two children -- the reader
(``Receiver.reader``) and the writer (``Transmitter.writer``, beside the stall
watchdog when ``tx_stall_timeout`` is set)::

    open_mux's nursery
    └── run(psock-N)          cancel scope: life.scope (fail() cancels it)
        ├── reader            cancel scope: rx.scope (unattach() cancels it)
        └── writer            (or: watched writer = writer + stall watchdog)

A failure cancels that stream's scope only: its messages go elsewhere (see
:meth:`Lifecycle.fail`) and every other stream goes on.  The stream's phase
moves only through :func:`._state.transition`; every allowed move is listed
in ``_state.py``.
"""

from __future__ import annotations

import errno as _errno
import logging
import weakref
from collections.abc import Callable
from typing import final

import trio
from trio.lowlevel import enable_ki_protection

from ._bugs import BugReport
from ._errors import StreamError
from ._events import (
    MuxEvent,
    StreamAttached,
    StreamFailed,
    StreamResumed,
    StreamStalled,
    StreamUnattached,
)
from ._feeds import ERROR_BACKLOG, EVENT_BACKLOG, ErrorFeed, Feed
from ._parsers import Parser
from ._receive import FailStream, Receiver
from ._state import HEALTHY, RELEASED, Phase, transition
from ._stats import TOTALLED, StreamTotals
from ._stream import AttachedStream, StreamLife, life_of
from ._transmit import Transmitter

__all__ = ["Lifecycle", "lowest_free"]

logger = logging.getLogger("trio_kcm")

#: Reader failures that the parser or its limits caused (the kernel's RX-Intr).
_PARSER_ERRNOS = frozenset(
    {_errno.EBADMSG, _errno.EPROTO, _errno.EMSGSIZE, _errno.ETIMEDOUT, _errno.ENOBUFS}
)

# Streams attached to any mux in this process, by id (a stream is in at most
# one mux, as a TCP socket is in the kernel: EALREADY).  Weak, so that a mux
# that died mid-way can leave no stale entry behind.
_attached: weakref.WeakValueDictionary[int, AttachedStream] = weakref.WeakValueDictionary()


def lowest_free(used: set[int]) -> int:
    """Take the lowest number not in ``used`` (as the kernel numbers kcm-N, psock-N)."""
    i = 0
    while i in used:
        i += 1
    used.add(i)
    return i


@final
class Lifecycle:
    """Every attached stream of one mux, from attach to release."""

    __slots__ = (
        "attaches",
        "auto_close",
        "bugs",
        "clock",
        "close_timeout",
        "closing_event",
        "departed",
        "errors",
        "events",
        "failures",
        "finished",
        "graceful",
        "indices",
        "nursery",
        "owner",
        "receive",
        "retry_in_doubt",
        "stall_timeout",
        "streams",
        "transmit",
        "unattaches",
        "why",
    )

    def __init__(
        self,
        owner: object,
        transmit: Transmitter,
        receive: Receiver,
        bugs: BugReport,
        *,
        auto_close: bool,
        retry_in_doubt: bool,
        close_timeout: float,
        tx_stall_timeout: float | None,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.owner = owner
        self.clock = clock  # stamps events: trio's, or a harness's
        self.transmit = transmit
        self.receive = receive
        self.bugs = bugs
        self.auto_close = auto_close
        self.retry_in_doubt = retry_in_doubt
        self.close_timeout = close_timeout
        self.stall_timeout = tx_stall_timeout
        #: The attached streams: healthy ones, and failed ones not released.
        self.streams: dict[AttachedStream, StreamLife] = {}
        self.indices: set[int] = set()
        self.errors = ErrorFeed(
            ERROR_BACKLOG,
            attached=lambda: len(self.streams),
            gone=lambda error: life_of(error.stream).phase in RELEASED,
        )
        self.events: Feed[MuxEvent] = Feed(EVENT_BACKLOG)
        self.nursery: trio.Nursery | None = None
        #: Set when closing starts: no new attaches; healthy streams close as
        #: their tasks end.
        self.closing_event = trio.Event()
        self.graceful = False  # closing after a normal exit: streams close gracefully
        self.finished = False  # all tasks are done
        self.attaches = 0
        self.unattaches = 0
        self.failures = 0
        #: The counters of the streams that left, added up (see totals()).
        self.departed: dict[str, int] = dict.fromkeys(TOTALLED, 0)
        #: Why streams failed or left: rx_aborts, rx_interrupted,
        #: rx_unrecoverable, unattached_reserved (see StreamTotals).
        self.why: dict[str, int] = dict.fromkeys(
            ("rx_aborts", "rx_interrupted", "rx_unrecoverable", "unattached_reserved"), 0
        )

    # -- attach ------------------------------------------------------------------

    def check_free(self, transport: trio.abc.Stream) -> None:
        """Raise ValueError if ``transport`` is attached to a mux already."""
        other = _attached.get(id(transport))
        if other is not None and other.stream is transport and life_of(other).phase not in RELEASED:
            raise ValueError(f"{transport!r} is already attached to a mux")

    @enable_ki_protection
    def attach(
        self,
        transport: trio.abc.Stream,
        parser: Parser,
        max_message_size: int,
        assembly_timeout: float | None,
        unread_data: bytes = b"",
    ) -> AttachedStream:
        """Attach ``transport``: start its task, offer it for transmit, announce it.

        ``unread_data``: bytes of the stream read before, parsed first.
        """
        life = StreamLife(self.owner, transport, parser, lowest_free(self.indices))
        life.tx = self.transmit.open_stream(life)
        life.rx = self.receive.open_stream(life, max_message_size, assembly_timeout, unread_data)
        handle = life.handle = AttachedStream(life)
        _attached[id(transport)] = handle
        self.streams[handle] = life
        self.attaches += 1
        if self.nursery is not None:  # None: a harness drives it (trio_kcm.testing)
            self.nursery.start_soon(self.run, life)
        try:
            self.transmit.add_candidate(life.tx)
        except BaseException as exc:
            self.bugs.report(exc)
            raise
        self.events.put(StreamAttached(handle, self.clock()))
        logger.info("attached %r", handle)
        return handle

    # -- the task tree -----------------------------------------------------------

    async def run(self, life: StreamLife) -> None:
        """The stream runner: the reader and the writer, in the stream's scope.

        When both end (the stream failed, was unattached, or the mux closes),
        it closes the stream if the mux owns it then: on failure with
        ``auto_close``, and when the mux closes or dies.  Then ``life.done``.
        """
        try:
            with life.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self.receive.reader, life.rx, self._reader_failed(life))
                    if self.stall_timeout is None:
                        nursery.start_soon(self.transmit.writer, life.tx, self._writer_failed(life))
                    else:
                        nursery.start_soon(self._watched_writer, life)
        finally:
            closing = self.closing or (
                self.nursery is not None and self.nursery.cancel_scope.cancel_called
            )
            phase = life.phase
            if phase is Phase.FAILED:
                close = self.auto_close or closing
            else:
                close = closing and phase is not Phase.UNATTACHING
            try:
                if close and phase not in RELEASED:
                    self.release(life, closed=True)
                    await self._close_transport(life, graceful=self.graceful)
            finally:
                life.done.set()

    def _reader_failed(self, life: StreamLife) -> FailStream:
        def fail(
            errno: int,
            message: str,
            cause: BaseException | None,
            partial: bytes | None,
            *,
            eof: bool = False,
        ) -> None:
            if life.phase in HEALTHY:
                self.why["rx_aborts"] += 1
                if errno in _PARSER_ERRNOS:
                    self.why["rx_interrupted"] += 1
            self.fail(life, errno, message, cause=cause, partial=partial, eof=eof)

        return fail

    def _writer_failed(self, life: StreamLife) -> Callable[[BaseException], None]:
        def fail(exc: BaseException) -> None:
            self.fail(life, _errno.EPIPE, f"write failed: {exc!r}", cause=exc)

        return fail

    async def _watched_writer(self, life: StreamLife) -> None:
        """The writer, and beside it the stall watchdog, which ends with it."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._stall_watchdog, life)
            await self.transmit.writer(life.tx, self._writer_failed(life))
            nursery.cancel_scope.cancel()

    async def _stall_watchdog(self, life: StreamLife) -> None:
        """Look at the write in flight every quarter of ``tx_stall_timeout``.

        The writer is not touched: a write is the ``inflight`` list object, and
        one seen at two looks ``timeout`` apart has made no progress for at
        least that long.  A stall is seen between ``timeout`` and 1.25 times
        ``timeout`` after the write started.
        """
        timeout = self.stall_timeout
        assert timeout is not None
        stx = life.tx
        seen: object = None
        seen_at = 0.0
        while True:
            await trio.sleep(timeout / 4)
            now = trio.current_time()
            inflight = stx.inflight
            if inflight is not seen:
                seen, seen_at = inflight, now
                if life.phase is Phase.STALLED:
                    self._resume(life, now)
            elif (
                inflight is not None
                and life.phase is Phase.ACTIVE
                and life.handle in self.transmit.candidates
                and now - seen_at >= timeout
            ):
                self._stall(life, now)

    def _stall(self, life: StreamLife, now: float) -> None:
        """No new messages for a stalled stream; those not started move away."""
        life.phase = transition(life.phase, Phase.STALLED)
        life.stalled_at = now
        moved = self.transmit.stall(life.tx)
        self.events.put(StreamStalled(life.handle, sum(len(g.messages) for g in moved), now))
        self.transmit.requeue(moved)
        logger.warning("%r stalled: its write made no progress", life.handle)

    def _resume(self, life: StreamLife, now: float) -> None:
        """The stalled write completed: the policy gets the stream again."""
        life.phase = transition(life.phase, Phase.ACTIVE)
        self.events.put(StreamResumed(life.handle, now - life.stalled_at, now))
        self.transmit.add_candidate(life.tx)
        logger.info("%r resumed", life.handle)

    # -- failure -----------------------------------------------------------------

    def fail(
        self,
        life: StreamLife,
        errno: int,
        message: str,
        *,
        cause: BaseException | None = None,
        partial: bytes | None = None,
        eof: bool = False,
    ) -> None:
        """Cut a stream off alone; report it; send its messages elsewhere.

        ``eof``: the reader reached the end of the stream; with no partial
        message that is the peer's clean close, logged at INFO.
        """
        if life.phase not in HEALTHY:
            return
        life.phase = transition(life.phase, Phase.FAILED)
        self.failures += 1
        aborted = self.transmit.abort(life.tx)
        if partial is None:
            partial = life.rx.take_unread()
        if partial:
            self.why["rx_unrecoverable"] += 1
        error = StreamError(
            errno,
            f"psock-{life.index}: {message}",
            stream=life.handle,
            partial_bytes=partial,
            in_doubt=aborted.in_doubt,
            unsent=aborted.unsent,
            peer_closed=eof and not partial,
        )
        error.__cause__ = cause
        life.error = error
        self.transmit.reroute(life.tx, aborted, retry_in_doubt=self.retry_in_doubt)
        self.receive.hold_messages(life.rx)
        self.errors.put(error)
        self.events.put(StreamFailed(life.handle, error, self.clock()))
        life.scope.cancel()
        if error.peer_closed:
            logger.info("%r closed by its peer: %s", life.handle, error)
        else:
            logger.warning("%r failed: %s", life.handle, error)

    # -- unattach and release ----------------------------------------------------

    async def unattach(self, life: StreamLife) -> trio.abc.Stream:
        """:meth:`Mux.unattach` once the handle was checked (see its docstring)."""
        handle = life.handle
        if life.phase is Phase.UNATTACHING:
            raise trio.BusyResourceError(f"{handle!r} is already being unattached")
        if life.phase in HEALTHY:
            self.begin_unattach(life)
            stx = life.tx
            if stx.inflight is None and not stx.pending:
                # No write to wait for: the tasks end at their next checkpoint.
                with trio.CancelScope(shield=True):
                    await life.done.wait()
            else:
                try:
                    await life.done.wait()
                except trio.Cancelled:
                    if stx.inflight is not None and not life.done.is_set():
                        try:
                            self.fail(life, _errno.EPIPE, "unattach was cancelled during a write")
                        except BaseException as exc:
                            self.bugs.report(exc)
                        raise
                    # The write ended as the cancel came: nothing is in doubt, and
                    # the stream's tasks leave it open for us (or already have),
                    # so finish as with no write in flight.  The cancellation
                    # stays pending for the caller's next checkpoint.
                    with trio.CancelScope(shield=True):
                        await life.done.wait()
            # (The phase may have moved while this waited: mypy cannot know.)
            if life.phase is Phase.UNATTACHING:  # type: ignore[comparison-overlap]
                self.end_unattach(life)
                return life.transport
        await life.done.wait()
        if life.phase is Phase.CLOSED:
            raise trio.ClosedResourceError("the mux is closed: it closed its streams")
        self.release(life, closed=False)
        return life.transport

    @enable_ki_protection
    def begin_unattach(self, life: StreamLife) -> None:
        """Unattach, first step: no new messages; the reader stops, the writer finishes."""
        life.phase = transition(life.phase, Phase.UNATTACHING)
        if life.tx.owners:
            self.why["unattached_reserved"] += 1
        try:
            self.transmit.leave(life.tx)
        except BaseException as exc:
            self.bugs.report(exc)
            raise
        life.rx.scope.cancel()

    @enable_ki_protection
    def end_unattach(self, life: StreamLife) -> None:
        """Unattach, last step (the stream's tasks ended): hand it back."""
        life.unread = life.rx.take_unread()
        try:
            self.receive.hold_messages(life.rx)
        except BaseException as exc:
            self.bugs.report(exc)
            raise
        self.release(life, closed=False)
        logger.info("unattached %r", life.handle)

    def release(self, life: StreamLife, *, closed: bool) -> None:
        """The stream leaves the mux: handed back (``closed=False``) or closed by it."""
        phase = life.phase
        if phase in RELEASED:
            return
        if phase is Phase.FAILED:
            life.phase = transition(phase, Phase.DISCARDED)
        elif closed:
            life.phase = transition(phase, Phase.CLOSED)
        else:
            life.phase = transition(phase, Phase.UNATTACHED)
        handle = life.handle
        self.events.put(StreamUnattached(handle, closed, self.clock()))
        self.streams.pop(handle, None)
        self.indices.discard(life.index)
        if _attached.get(id(life.transport)) is handle:
            del _attached[id(life.transport)]
        self.unattaches += 1
        stats = handle.statistics()
        departed = self.departed
        for name in TOTALLED:
            departed[name] += getattr(stats, name)
        self.transmit.close_stream(life.tx)
        life.released.set()
        if not self.finished:
            self.errors.trim()

    def totals(self) -> StreamTotals:
        """The counters of every stream, attached now or gone, added up."""
        sums = dict(self.departed)
        for handle in self.streams:
            stats = handle.statistics()
            for name in TOTALLED:
                sums[name] += getattr(stats, name)
        return StreamTotals(**sums, **self.why)

    def error_of(self, handle: AttachedStream) -> StreamError | None:
        """The error a stream failed with, if it did."""
        return life_of(handle).error

    async def wait_ended(self, handle: AttachedStream) -> None:
        """Wait until the stream left the mux, or failed and its tasks ended.

        (A failed stream stays attached with ``auto_close=False`` until it is
        unattached: that is for the waiter to do.)
        """
        life = life_of(handle)
        await life.done.wait()
        if life.phase is not Phase.FAILED:
            # Healthy when its tasks ended: it is being unattached, and the
            # unattaching task releases it next.
            await life.released.wait()

    async def _close_transport(self, life: StreamLife, *, graceful: bool) -> None:
        """Close a stream the mux owns; a failure to close is logged, not raised."""
        with trio.CancelScope(shield=True):
            try:
                if life.phase is not Phase.DISCARDED and graceful:
                    with trio.move_on_after(self.close_timeout):
                        await life.transport.aclose()
                await trio.aclose_forcefully(life.transport)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                logger.warning("closing %r failed: %r", life.handle, exc)

    # -- closing (called by the mux, in this order) ------------------------------

    @property
    def closing(self) -> bool:
        """Whether the mux is closing (or closed)."""
        return self.closing_event.is_set()

    def begin_closing(self) -> None:
        """Closing starts: no new attaches; ``closing_event`` is set."""
        self.closing_event.set()

    def stop(self) -> None:
        """Stop every stream: no candidates left; a write cut short fails its stream."""
        lives = list(self.streams.values())
        for life in lives:
            self.transmit.remove_candidate(life.tx)
        for life in lives:
            if life.tx.inflight:
                # Reported like any failed write: its messages are in doubt.
                self.fail(life, _errno.EPIPE, "the mux closed during a write")
            life.scope.cancel()

    async def finish(self) -> None:
        """All tasks are done: close the streams still attached, end the feeds.

        Left are failed streams nobody unattached (``auto_close=False``) and
        streams whose task died with a policy bug: the mux owns them until
        unattach, so it closes them.
        """
        self.finished = True
        self.bugs.finished = True
        self.begin_closing()
        try:
            for life in list(self.streams.values()):
                self.release(life, closed=True)
                await self._close_transport(life, graceful=False)
                life.done.set()
        finally:
            self.errors.close()
            self.events.close()
