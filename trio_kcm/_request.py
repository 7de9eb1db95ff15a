"""Request/response over a mux: calls matched to replies, on the stream that carried them.

A :class:`Requester` owns one KCM socket of a mux.  Each call picks a stream
itself (not the transmit policy), because it must know where its request
went: the reply comes back on that connection, and that connection's failure
decides the call's fate.

    request(message)
      -> pick a transmit candidate (fewest calls outstanding; waits for one)
      -> the call joins that stream's *line*; send_to(message, stream)
      -> wait: a reply (matched by key, or by order on the stream) settles it;
         the stream's failure settles it with an error, or, for a request
         the stream never started to write, sends it again elsewhere

One receive task takes the socket's replies and settles calls; a watcher
task per stream in use waits for the stream's end.  Both settle calls
synchronously, right after taking what they act on, so the replies a stream
delivered before it failed are matched before its calls are failed.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Hashable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias, final

import outcome
import trio

from ._socket import withdraw_unwritten

if TYPE_CHECKING:
    from ._lifecycle import Lifecycle
    from ._socket import KCMSocket
    from ._stream import AttachedStream
    from ._transmit import Transmitter

__all__ = ["KeyFunction", "Requester", "RequesterStatistics", "open_requester"]

logger = logging.getLogger("trio_kcm")

#: Reads the key that pairs a reply with its request (a Thrift seqid, a DNS id...).
KeyFunction = Callable[[bytes], Hashable]

#: Replies taken from the socket at a time.
_TAKE = 256


@dataclass(frozen=True, slots=True)
class RequesterStatistics:
    """A snapshot of a :class:`Requester`'s counters."""

    #: Calls waiting now: for a stream, for room to send, or for their reply.
    calls_waiting: int
    #: Calls started.
    calls: int
    #: Calls answered with their reply.
    replies: int
    #: Replies that no call waited for (its caller gave up, an unknown key,
    #: or a key function that raised on it): counted and dropped.
    replies_dropped: int
    #: Calls failed by their stream's failure after their request was
    #: written, or while it was being written: they raised
    #: :exc:`trio.BrokenResourceError`.
    calls_failed: int
    #: Requests sent again on another stream: their stream failed or left
    #: before it started to write them.
    retries: int
    #: Requests taken back unwritten because their call was cancelled (a
    #: timeout) while they waited in their stream's queue.
    withdrawn: int


class _Retry:
    """A call's request was never written: send it again."""


_RETRY = _Retry()

_Settled: TypeAlias = "outcome.Outcome[bytes] | _Retry"


@final
class _Call:
    __slots__ = ("abandoned", "done", "key", "message", "result", "stream")

    def __init__(self, message: bytes, key: Hashable) -> None:
        self.message = message
        self.key = key
        self.stream: AttachedStream | None = None
        self.done = trio.Event()
        self.result: _Settled | None = None
        #: Order matching: its caller gave up after the request was accepted;
        #: the call still takes its place in the stream's line, for its reply.
        self.abandoned = False

    def settle(self, result: _Settled) -> None:
        self.result = result
        self.done.set()


@final
class Requester:
    """Calls over the streams of a mux: send a request, get its reply.

    Made by :meth:`Mux.open_requester`.  Any number of tasks may call
    :meth:`request` at once; their requests are spread over the attached
    streams, and each reply is handed to the call that waits for it.

    **Which stream.**  Each call picks the attached, healthy stream with the
    fewest calls outstanding (ties in turn), and sends with
    :meth:`KCMSocket.send_to`: the mux's transmit policy is not asked, since
    a call must know which connection carries its request.  With no stream
    attached, a call waits for one.

    **Matching.**  With a ``key`` function, a reply goes to the call whose
    request had the same key, whatever stream it came on (concurrent calls
    must use different keys).  Without one, replies are matched by order:
    the first reply a stream delivers answers the oldest call on that stream,
    as in HTTP/1.1 pipelining -- the peer must answer each connection's
    requests in order.

    **Failures.**  When a stream fails, or is unattached, the replies it
    delivered are matched first; then each call still waiting on it either
    raises :exc:`trio.BrokenResourceError` (its
    :class:`StreamError`, if any, is ``__cause__``) if its request was
    written or being written -- the peer may have acted on it -- or, if the
    stream never started to write it, is sent again on another stream
    (counted in ``retries``).  A request is never sent twice.

    **Timeouts and cancellation** are Trio's: wrap a call in
    :func:`trio.fail_after` or any cancel scope.  A call cancelled while its
    request still waits to be written -- for room in the socket's send
    buffer, or in its stream's queue -- takes the request back: it is never
    sent (counted in ``withdrawn``).  Once the request's write has begun, it
    goes out whole, and its reply is dropped when it comes (counted in
    ``replies_dropped``).

    The requester must be the only socket of its mux that receives: a reply
    that the receive policy hands to another socket never reaches its call.
    """

    __slots__ = (
        "_calls",
        "_closed",
        "_dropped",
        "_failed",
        "_key",
        "_lifecycle",
        "_lines",
        "_nursery",
        "_replies",
        "_request_key",
        "_retries",
        "_sock",
        "_started",
        "_transmit",
        "_turn",
        "_waiting",
        "_withdrawn",
    )

    def __init__(
        self,
        sock: KCMSocket,
        transmit: Transmitter,
        lifecycle: Lifecycle,
        nursery: trio.Nursery,
        *,
        key: KeyFunction | None,
        request_key: KeyFunction | None,
    ) -> None:
        self._sock = sock
        self._transmit = transmit
        self._lifecycle = lifecycle
        self._nursery = nursery
        self._key = key
        self._request_key = request_key or key
        #: Calls by key (key matching), while they wait for their reply.
        self._waiting: dict[Hashable, _Call] = {}
        #: Per stream in use, its calls in the order their requests were
        #: accepted: a dict (key matching: calls leave from anywhere) or a
        #: deque (order matching: replies answer the oldest).
        self._lines: dict[AttachedStream, dict[_Call, None] | deque[_Call]] = {}
        self._closed = False
        self._turn = 0
        self._calls = 0
        self._started = 0
        self._replies = 0
        self._dropped = 0
        self._failed = 0
        self._retries = 0
        self._withdrawn = 0

    @property
    def socket(self) -> KCMSocket:
        """The KCM socket the requester sends and receives on (for its statistics)."""
        return self._sock

    def statistics(self) -> RequesterStatistics:
        """Return a snapshot of the requester's counters."""
        return RequesterStatistics(
            calls_waiting=self._calls,
            calls=self._started,
            replies=self._replies,
            replies_dropped=self._dropped,
            calls_failed=self._failed,
            retries=self._retries,
            withdrawn=self._withdrawn,
        )

    async def request(self, message: bytes) -> bytes:
        """Send ``message`` as a request and return its reply.

        Args:
          message: One whole message, as :meth:`KCMSocket.send` takes it.

        Returns:
          The reply: one whole message, as :meth:`KCMSocket.receive` returns it.

        Raises:
          trio.BrokenResourceError: The stream that carried the request failed
            or was unattached before the reply came, after it had started
            to write the request; the :class:`StreamError` is ``__cause__``
            (none for an unattached stream).
          trio.ClosedResourceError: The requester or its mux is closed.
          ValueError: Another call with the same key is waiting.
          BadMessage, OSError: As :meth:`KCMSocket.send` raises them for
            ``message``; or the ``key`` function raised on it.

        """
        if type(message) is not bytes:
            if isinstance(message, str):
                raise TypeError("messages are bytes, not str")
            message = memoryview(message).tobytes()
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        key = None
        if self._request_key is not None:
            key = self._request_key(message)
            if key in self._waiting:
                raise ValueError(f"a call with key {key!r} is already waiting")
        call = _Call(message, key)
        if self._key is not None:
            self._waiting[key] = call
        self._calls += 1
        self._started += 1
        try:
            return await self._run_call(call)
        finally:
            self._calls -= 1
            self._forget(call)  # (answered: already gone)

    async def _run_call(self, call: _Call) -> bytes:
        while True:
            handle = await self._pick()
            line = self._line(handle)
            self._join(line, call)
            call.stream = handle
            try:
                await self._sock.send_to(call.message, handle)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                # Not accepted: the stream failed or left first (or we closed).
                self._leave(line, call)
                self._check_open()
                self._retries += 1
                continue
            except BaseException:
                self._leave(line, call)
                raise
            try:
                await call.done.wait()
            except BaseException:
                if call.result is None:
                    self._give_up(handle, line, call)
                raise
            result = call.result
            if isinstance(result, _Retry):
                self._retries += 1
                call.done = trio.Event()
                call.result = None
                continue
            assert result is not None
            return result.unwrap()

    # -- the lines ---------------------------------------------------------------

    async def _pick(self) -> AttachedStream:
        """The candidate with the fewest calls outstanding; wait for one if none."""
        transmit = self._transmit
        while not transmit.candidates:
            self._check_open()
            await transmit.wait_for_candidate()
        self._check_open()
        candidates = list(transmit.candidates)
        self._turn = (self._turn + 1) % len(candidates)
        lines = self._lines
        best = None
        least = 0
        # Scan from a turning start, so that ties go in turn.
        for i in range(len(candidates)):
            handle = candidates[(self._turn + i) % len(candidates)]
            line = lines.get(handle)
            n = 0 if line is None else len(line)
            if best is None or n < least:
                best, least = handle, n
        assert best is not None
        return best

    def _line(self, handle: AttachedStream) -> dict[_Call, None] | deque[_Call]:
        line = self._lines.get(handle)
        if line is None:
            line = {} if self._key is not None else deque()
            self._lines[handle] = line
            self._nursery.start_soon(self._watch, handle, line)
        return line

    @staticmethod
    def _join(line: dict[_Call, None] | deque[_Call], call: _Call) -> None:
        if isinstance(line, dict):
            line[call] = None
        else:
            line.append(call)

    @staticmethod
    def _leave(line: dict[_Call, None] | deque[_Call], call: _Call) -> None:
        if isinstance(line, dict):
            line.pop(call, None)
        elif call in line:
            line.remove(call)

    def _give_up(
        self, handle: AttachedStream, line: dict[_Call, None] | deque[_Call], call: _Call
    ) -> None:
        """The caller gave up (cancelled) after the request was accepted.

        A request still waiting in its stream's queue is withdrawn: never
        written, so no reply will come.  One written (or being written) has
        its reply dropped when it comes.
        """
        self._forget(call)
        withdrawn = withdraw_unwritten(self._sock, handle, call.message)
        self._withdrawn += withdrawn
        if withdrawn or isinstance(line, dict):
            self._leave(line, call)
        else:
            call.abandoned = True  # keeps its place: its reply comes in order

    def _forget(self, call: _Call) -> None:
        if self._key is not None and self._waiting.get(call.key) is call:
            del self._waiting[call.key]

    def _check_open(self) -> None:
        if self._closed or self._lifecycle.closing:
            raise trio.ClosedResourceError("the requester is closed")

    # -- replies -----------------------------------------------------------------

    async def _receive_loop(self) -> None:
        """Take replies and settle their calls until the socket closes."""
        sock = self._sock
        try:
            while True:
                self._settle_replies(await sock.receive_many_from(_TAKE))
        except trio.ClosedResourceError:
            self._close()

    def _settle_replies(self, replies: list[tuple[bytes, AttachedStream]]) -> None:
        """Hand each reply to the call that waits for it, or drop it."""
        key = self._key
        for reply, handle in replies:
            if key is not None:
                try:
                    call = self._waiting.pop(key(reply), None)
                except Exception as exc:
                    logger.warning("the requester's key function raised on a reply: %r", exc)
                    call = None
                if call is not None:
                    assert call.stream is not None
                    line = self._lines.get(call.stream)
                    if line is not None:
                        self._leave(line, call)
            else:
                line = self._lines.get(handle)
                call = line.popleft() if line else None  # type: ignore[union-attr]
                if call is not None and call.abandoned:
                    call = None
            if call is None:
                self._dropped += 1
                continue
            self._replies += 1
            call.settle(outcome.Value(reply))

    def _take_delivered(self) -> None:
        """Settle with the replies already delivered to the socket."""
        while True:
            try:
                replies = self._sock.receive_many_from_nowait(_TAKE)
            except (trio.WouldBlock, trio.ClosedResourceError):
                return
            self._settle_replies(replies)

    # -- streams ending ----------------------------------------------------------

    async def _watch(self, handle: AttachedStream, line: dict[_Call, None] | deque[_Call]) -> None:
        """Wait for the stream's end; then settle the calls still on it."""
        await self._lifecycle.wait_ended(handle)
        # The replies it delivered first (the receive task may not have run).
        self._take_delivered()
        if self._lines.get(handle) is line:
            del self._lines[handle]
        error = self._lifecycle.error_of(handle)
        calls = list(line)
        # A stream writes its queue in order: the requests it never started
        # are the last ones, listed (the same objects) in error.unsent.
        unsent: dict[int, int] = {}
        for message in error.unsent if error is not None else ():
            unsent[id(message)] = unsent.get(id(message), 0) + 1
        retry = set()
        for call in reversed(calls):
            n = unsent.get(id(call.message), 0)
            if not n:
                break
            unsent[id(call.message)] = n - 1
            retry.add(call)
        for call in calls:
            if call.abandoned or call.result is not None:
                continue
            if call in retry:
                call.settle(_RETRY)
                continue
            self._forget(call)
            self._failed += 1
            exc = trio.BrokenResourceError(
                f"{handle!r} {'failed' if error is not None else 'was unattached'}"
                " before the reply came"
            )
            exc.__cause__ = error
            call.settle(outcome.Error(exc))

    # -- closing -----------------------------------------------------------------

    def _close(self) -> None:
        """Fail every waiting call with ClosedResourceError; no new calls."""
        if self._closed:
            return
        self._closed = True
        for line in self._lines.values():
            for call in line:
                if call.result is None and not call.abandoned:
                    call.settle(outcome.Error(trio.ClosedResourceError("the requester was closed")))
        self._lines.clear()
        self._waiting.clear()
        self._transmit.wake_candidate_waiters()


@asynccontextmanager
async def open_requester(
    sock: KCMSocket,
    transmit: Transmitter,
    lifecycle: Lifecycle,
    *,
    key: KeyFunction | None,
    request_key: KeyFunction | None,
) -> AsyncIterator[Requester]:
    """:meth:`Mux.open_requester` (see its docstring)."""
    try:
        async with trio.open_nursery() as nursery:
            requester = Requester(
                sock, transmit, lifecycle, nursery, key=key, request_key=request_key
            )
            nursery.start_soon(requester._receive_loop)
            try:
                yield requester
            finally:
                requester._close()
                nursery.cancel_scope.cancel()
    finally:
        await sock.aclose()
