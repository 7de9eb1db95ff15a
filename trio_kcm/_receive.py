"""The receive scheduler: stream bytes -> whole messages -> a socket picked by the policy.

Each attached stream has a *reader* task (:meth:`Receiver.reader`): it reads,
feeds its assembler (the strparser), and *steers* each complete message to
the socket the receive policy picks from the exact set of receive candidates
this scheduler keeps -- open, receive-enabled sockets whose queue is below
their buffer size.  A message is delivered whole, to one socket, once.

When no socket has room, the rest of the read waits on the stream
(:class:`StreamRx` ``held``) and the reader *pauses* -- it stops reading, and
TCP's window pushes back on the peer -- until a socket is added or has room
again.  Messages that must move (their socket was closed or disabled, their
stream left) wait in the mux's *hold* queue and are steered first.

A receiving task takes from its socket's queue (:meth:`Receiver.take`); a
socket that was full becomes a candidate again once it is down to half its
buffer.  Entry points a user's task calls are guarded once against policy
bugs (``_bugs.py``) and protected from KeyboardInterrupt.
"""

from __future__ import annotations

import bisect
import errno as _errno
import itertools
import math
import operator
import os
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol, final

import outcome
import trio
import trio_util
from trio.lowlevel import enable_ki_protection

from ._assembler import Assembler, AssemblyError
from ._budget import SMALL, Budget
from ._bugs import BugReport
from ._policy import Policy
from ._state import HEALTHY
from ._stream import plain_socket, raise_socket_error

if TYPE_CHECKING:
    from ._socket import KCMSocket
    from ._stream import AttachedStream, StreamLife

__all__ = ["READ_SIZE", "Receiver", "SocketRx", "StreamRx"]

#: Bytes asked of a stream per read.
READ_SIZE = 65536

_first = operator.itemgetter(0)


class FailStream(Protocol):
    """How a reader fails its stream.

    ``partial``: the bytes of a half-received message (None: the assembler's);
    ``eof``: the peer closed the stream (a clean close if nothing is partial).
    """

    def __call__(
        self,
        errno: int,
        message: str,
        cause: BaseException | None,
        partial: bytes | None,
        *,
        eof: bool = False,
    ) -> None: ...


@final
class SocketRx:
    """One socket's receive side: its queue, and the tasks waiting on it."""

    __slots__ = (
        "bytes",
        "closed",
        "closed_by_mux",
        "enabled",
        "limit",
        "msgs",
        "queue",
        "queued_bytes",
        "sock",
        "waiters",
    )

    def __init__(self, sock: KCMSocket, limit: int) -> None:
        self.sock = sock
        self.limit = limit
        self.enabled = True
        self.closed = False
        self.closed_by_mux = False
        self.queue: deque[tuple[bytes, AttachedStream]] = deque()
        self.queued_bytes = 0
        self.waiters: deque[trio.lowlevel.Task] = deque()
        self.msgs = 0
        self.bytes = 0


def _waiting_reader(stream: trio.abc.Stream) -> Callable[[int], Awaitable[bytes]] | None:
    """For a plain :class:`trio.SocketStream`: wait until readable, then read; else ``None``.

    ``receive_some`` tries a read first and waits only if it would block; after
    a short read the kernel's buffer is most likely empty, so that first try
    is a wasted system call and exception.  This waits first, then makes one
    non-blocking read (again only if the wait was spurious).  The file
    descriptor is asked for at each read, as for the eager write.
    """
    sock = plain_socket(stream)
    if sock is None:
        return None

    async def read(max_bytes: int) -> bytes:
        while True:
            await trio.lowlevel.wait_readable(sock)
            try:
                return os.read(sock.fileno(), max_bytes)  # -1 once closed: EBADF
            except BlockingIOError:
                pass
            except OSError as exc:
                raise_socket_error(exc)

    return read


@final
class StreamRx:
    """One stream's receive side: its assembler and what waits for a socket."""

    __slots__ = (
        "admitted",
        "assembler",
        "charge",
        "deadline",
        "held",
        "initial",
        "life",
        "paused",
        "paused_since",
        "scope",
        "timeout",
        "timeouts",
        "wait_read",
    )

    def __init__(
        self,
        life: StreamLife,
        max_message_size: int,
        assembly_timeout: float | None,
        initial: bytes = b"",
    ) -> None:
        self.life = life
        self.assembler = Assembler(life.parser, max_message_size)
        #: Bytes of the stream read before it was attached: the reader parses
        #: them first, as if it had read them.
        self.initial = initial
        self.timeout = assembly_timeout
        #: When the message being assembled must be complete (inf: none is).
        self.deadline = math.inf
        #: Complete messages read from it, waiting for a socket with room.
        self.held: list[bytes] = []
        self.paused_since: float | None = None
        self.paused = 0.0
        self.timeouts = 0
        #: The reader's own scope: unattach stops the reader alone.
        self.scope = trio.CancelScope()
        #: The read after a short one, for a plain SocketStream (else None).
        self.wait_read = _waiting_reader(life.transport)
        #: What the mux's budget counts for it: its admitted message's
        #: length (``admitted``), or the bytes of its partial message.
        self.charge = 0
        self.admitted = False

    def take_unread(self) -> bytes:
        """What was read of the stream and not parsed into whole messages."""
        unread = self.initial + self.assembler.take_partial()
        self.initial = b""
        return unread

    def paused_seconds(self) -> float:
        """Seconds the reader was stopped for backpressure, a pause in progress included."""
        paused = self.paused
        if self.paused_since is not None:
            paused += trio.current_time() - self.paused_since
        return paused


@final
class Receiver:
    """The receive scheduler of one mux: its policy, candidates, and readers."""

    __slots__ = (
        "budget",
        "bugs",
        "bytes",
        "candidates",
        "hold",
        "msgs",
        "paused_readers",
        "policy",
        "space",
    )

    def __init__(self, policy: Policy, bugs: BugReport, budget: Budget | None = None) -> None:
        self.policy = policy
        self.bugs = bugs
        #: The mux-wide memory budget of received data (``_budget.py``), or None.
        self.budget = budget
        #: The receive candidates, exactly.
        self.candidates: dict[KCMSocket, SocketRx] = {}
        #: Complete messages waiting in the mux for a socket (see the module doc).
        self.hold: deque[tuple[bytes, AttachedStream]] = deque()
        #: Set when a socket has room for paused readers.
        self.space = trio_util.RepeatedEvent()
        self.paused_readers = 0
        self.msgs = 0
        self.bytes = 0

    # -- sockets -----------------------------------------------------------------

    def open_socket(self, sock: KCMSocket, limit: int) -> SocketRx:
        """A new socket's receive side (a candidate once :meth:`add_socket` says so)."""
        return SocketRx(sock, limit)

    @enable_ki_protection
    def add_socket(self, rx: SocketRx) -> None:
        """The new socket is ready: it becomes a receive candidate."""
        try:
            self._add_candidate(rx)
        except BaseException as exc:
            self.bugs.report(exc)
            raise

    def _add_candidate(self, rx: SocketRx) -> None:
        self.candidates[rx.sock] = rx
        self.policy.socket_added(rx.sock)
        if self.hold:
            self.steer_hold()
        if self.paused_readers and self.candidates:
            self.space.set()

    def _remove_candidate(self, rx: SocketRx) -> None:
        if self.candidates.pop(rx.sock, None) is not None:
            self.policy.socket_removed(rx.sock)

    @enable_ki_protection
    def disable(self, rx: SocketRx) -> None:
        """``disable_receive``: its queue moves to other sockets."""
        rx.enabled = False
        try:
            self._move_queue(rx)
        except BaseException as exc:
            self.bugs.report(exc)
            raise

    @enable_ki_protection
    def enable(self, rx: SocketRx) -> None:
        """``enable_receive``: a candidate again if it has room."""
        rx.enabled = True
        try:
            if rx.queued_bytes < rx.limit:
                self._add_candidate(rx)
        except BaseException as exc:
            self.bugs.report(exc)
            raise

    @enable_ki_protection
    def close_socket(self, rx: SocketRx, *, by_mux: bool) -> None:
        """Waiting receivers get ClosedResourceError; its queue moves to the others."""
        rx.closed = True
        rx.closed_by_mux = by_mux
        while rx.waiters:
            error = trio.ClosedResourceError("the KCM socket was closed")
            trio.lowlevel.reschedule(rx.waiters.popleft(), outcome.Error(error))
        try:
            self._move_queue(rx)
        except BaseException as exc:
            self.bugs.report(exc)
            raise

    def _move_queue(self, rx: SocketRx) -> None:
        """A socket stops receiving: its queued messages go to the others."""
        self._remove_candidate(rx)
        if rx.queue:
            entries = list(rx.queue)
            rx.queue.clear()
            nbytes = rx.queued_bytes
            rx.queued_bytes = 0
            self.policy.socket_drained(rx.sock, nbytes)
            # Ahead of messages that were already waiting in the mux.
            self.hold.extendleft(reversed(entries))
            self.steer_hold()

    # -- taking ------------------------------------------------------------------

    @enable_ki_protection
    def take(self, rx: SocketRx, max_messages: int) -> list[bytes]:
        """A receive: take up to ``max_messages`` from ``rx``'s (non-empty) queue.

        Called in the receiving task.  The policy hears ``socket_drained``; a
        socket that had stopped being a candidate (full) becomes one again
        once it is down to half its buffer, which steers the hold queue and
        wakes paused readers (see :meth:`_add_candidate`).
        """
        queue = rx.queue
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
        rx.queued_bytes -= nbytes
        rx.msgs += len(out)
        rx.bytes += nbytes
        budget = self.budget
        if budget is not None:
            budget.queued -= nbytes
            if budget.waiting:
                budget.wake()
        try:
            self.policy.socket_drained(rx.sock, nbytes)
            # A full socket comes back below half its buffer (the kernel waits
            # for rcvlowat, by default empty): coming back at the first free
            # byte would wake a paused reader for every message taken.
            if (
                rx.enabled
                and not rx.closed
                and rx.queued_bytes <= rx.limit >> 1
                and rx.sock not in self.candidates
            ):
                self._add_candidate(rx)
        except BaseException as exc:
            self.bugs.report(exc)
            raise
        return out

    def take_from(self, rx: SocketRx, max_messages: int) -> list[tuple[bytes, AttachedStream]]:
        """:meth:`take`, with the stream each message came on."""
        origins = [o for _, o in itertools.islice(rx.queue, max_messages)]
        return list(zip(self.take(rx, max_messages), origins, strict=True))

    # -- steering ----------------------------------------------------------------

    def _picked(self, picked: KCMSocket | None) -> SocketRx:
        try:
            return self.candidates[picked]  # type: ignore[index]
        except (KeyError, TypeError):
            raise RuntimeError(
                f"policy {self.policy!r} picked {picked!r}, which is not a receive candidate"
            ) from None

    def _deliver(self, rx: SocketRx, message: bytes, origin: AttachedStream) -> None:
        rx.queue.append((message, origin))
        queued = rx.queued_bytes + len(message)
        rx.queued_bytes = queued
        if rx.waiters:
            trio.lowlevel.reschedule(rx.waiters.popleft())
        if queued >= rx.limit:
            self._remove_candidate(rx)

    def steer(self, origin: AttachedStream, messages: list[bytes]) -> int:
        """Deliver one read's messages; return how many found a socket."""
        policy = self.policy
        if policy.batch_affine and len(messages) > 1:
            return self._steer_runs(origin, messages)
        i = 0
        n = len(messages)
        pick = policy.pick_socket
        candidates = self.candidates
        reschedule = trio.lowlevel.reschedule
        # _deliver, inline: this loop runs once per message received.
        while i < n and candidates:
            message = messages[i]
            picked = pick(origin, message)
            if picked is None:
                break
            try:
                rx = candidates[picked]
            except (KeyError, TypeError):
                rx = self._picked(picked)  # raises the policy's error
            rx.queue.append((message, origin))
            queued = rx.queued_bytes + len(message)
            rx.queued_bytes = queued
            if rx.waiters:
                reschedule(rx.waiters.popleft())
            if queued >= rx.limit:
                self._remove_candidate(rx)
            i += 1
        policy.read_done(origin)
        return i

    def _steer_runs(self, origin: AttachedStream, messages: list[bytes]) -> int:
        """:meth:`steer` for a batch-affine policy: one pick per run of messages.

        A run is what the picked socket takes before it is full: messages
        while its queued bytes are below its limit, the one reaching the limit
        included (as one message at a time would go).  It is delivered with C
        loops: sizes summed by ``accumulate``, the end found by ``bisect``.
        """
        i = 0
        n = len(messages)
        policy = self.policy
        reschedule = trio.lowlevel.reschedule
        while i < n and self.candidates:
            picked = policy.pick_socket(origin, messages[i])
            if picked is None:
                break
            rx = self._picked(picked)
            run = messages[i:] if i else messages
            sizes = list(itertools.accumulate(map(len, run)))
            room = rx.limit - rx.queued_bytes
            count = bisect.bisect_left(sizes, room) + 1
            if count < len(run):
                run = run[:count]
            else:
                count = len(run)
            rx.queue.extend(zip(run, itertools.repeat(origin)))
            queued = rx.queued_bytes + sizes[count - 1]
            rx.queued_bytes = queued
            waiters = rx.waiters
            for _ in range(min(count, len(waiters))):
                reschedule(waiters.popleft())
            if queued >= rx.limit:
                self._remove_candidate(rx)
            i += count
        policy.read_done(origin)
        return i

    def steer_hold(self) -> None:
        hold = self.hold
        policy = self.policy
        while hold and self.candidates:
            message, origin = hold[0]
            picked = policy.pick_socket(None, message)
            if picked is None:
                break
            rx = self._picked(picked)
            hold.popleft()
            self._deliver(rx, message, origin)
        policy.read_done(None)

    # -- streams -----------------------------------------------------------------

    def open_stream(
        self,
        life: StreamLife,
        max_message_size: int,
        assembly_timeout: float | None,
        initial: bytes = b"",
    ) -> StreamRx:
        """A new stream's receive side; ``initial``: its bytes read before attach."""
        return StreamRx(life, max_message_size, assembly_timeout, initial)

    def hold_messages(self, srx: StreamRx) -> None:
        """A stream leaves: its complete, undelivered messages wait in the mux."""
        if srx.held:
            origin = srx.life.handle
            self.hold.extend((m, origin) for m in srx.held)
            srx.held = []
            self.steer_hold()

    def undelivered(self, streams: list[StreamRx]) -> int:
        """Complete messages that no socket took: in the hold queue and on ``streams``."""
        return len(self.hold) + sum(len(s.held) for s in streams)

    async def reader(self, srx: StreamRx, fail: FailStream) -> None:
        """The stream's reader task: reads -> assembler -> :meth:`steer`.

        It reads ``READ_SIZE`` bytes at a time, feeds them to the stream's
        assembler, and steers the complete messages; what no socket has room
        for waits on the stream while the reader pauses (:meth:`_pause`).  It
        enforces ``assembly_timeout`` from a message's first byte, and the
        mux's memory budget, if any (:meth:`_hold`, ``_budget.py``).  Any
        failure -- a read error, end of stream, a header the parser refuses, a
        timeout, no room -- calls ``fail`` and returns; unattach cancels its
        scope.
        """
        with srx.scope:
            try:
                await self._read_loop(srx, fail)
            finally:
                if self.budget is not None and srx.charge:
                    self.budget.release(srx.charge)
                    srx.charge = 0

    async def _read_loop(self, srx: StreamRx, fail: FailStream) -> None:
        life = srx.life
        origin = life.handle
        receive_some = life.transport.receive_some
        wait_read = srx.wait_read
        read = receive_some if wait_read is None else wait_read
        timeout = srx.timeout
        budget = self.budget
        size = READ_SIZE
        while True:
            if srx.held:
                held = srx.held
                srx.held = []
                done = self.steer(origin, held)
                if done < len(held):
                    srx.held = held[done:]
                    await self._pause(srx)
                    if life.phase not in HEALTHY:
                        return
                    continue
            if srx.initial:
                # Read before attach: parsed first, like a read.
                initial, srx.initial = srx.initial, b""
                if not self._absorb(srx, initial, fail):
                    return
                continue
            reserved = 0
            if budget is not None:
                size = self._budgeted_read(srx, budget, fail)
                if size <= 0:
                    if size < 0 or not await self._hold(srx, budget, fail):
                        return
                    continue
                if not srx.admitted:
                    reserved = size
                    budget.reserved += size
            try:
                if timeout is None or srx.deadline == math.inf:
                    data = await read(size)
                else:
                    with trio.move_on_at(srx.deadline) as deadline_scope:
                        data = await read(size)
                    if deadline_scope.cancelled_caught:
                        self._timed_out(srx, fail)
                        return
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                fail(_errno.EPIPE, f"read failed: {exc!r}", exc, None)
                return
            finally:
                if reserved and budget is not None:
                    budget.reserved -= reserved
            if life.phase not in HEALTHY:
                # Another task failed the stream while this read completed:
                # its partial message was already reported, and these bytes
                # may start mid-message.  They are not parsed.
                return
            if not data:
                fail(_errno.EPIPE, "end of stream (the peer closed it)", None, None, eof=True)
                return
            if wait_read is not None:
                # A full read: more is likely there, so try before waiting.
                read = receive_some if len(data) == size else wait_read
            if not self._absorb(srx, data, fail):
                return
            if budget is not None and budget.waiting:
                budget.wake()

    @staticmethod
    def _timed_out(srx: StreamRx, fail: FailStream) -> None:
        srx.timeouts += 1
        fail(
            _errno.ETIMEDOUT,
            f"a message took longer than assembly_timeout={srx.timeout}s to arrive",
            None,
            None,
        )

    @staticmethod
    def _budgeted_read(srx: StreamRx, budget: Budget, fail: FailStream) -> int:
        """The size of the stream's next read under the budget; 0: wait; -1: it failed.

        A stream whose message is admitted reads to the message's end (and
        ``SMALL`` past it).  A large message not admitted yet is admitted now
        if it fits; one larger than the whole hold (three quarters of the
        limit) fails (``ENOBUFS``).
        """
        assembler = srx.assembler
        announced = assembler.announced
        if not srx.admitted and announced > SMALL:
            if announced > budget.hold:
                budget.failures += 1
                fail(
                    _errno.ENOBUFS,
                    f"a message of {announced} bytes cannot fit in"
                    f" receive_memory_limit={budget.limit} (messages may hold"
                    f" {budget.hold} bytes of it)",
                    None,
                    None,
                )
                return -1
            if not budget.admit(srx.charge, announced):
                return 0
            srx.admitted = True
            srx.charge = announced
        if srx.admitted:
            return min(READ_SIZE, announced - assembler.partial_size + SMALL)
        return budget.read_size(srx.charge, READ_SIZE)

    async def _hold(self, srx: StreamRx, budget: Budget, fail: FailStream) -> bool:
        """No room for the stream's next read: wait until there is.

        A large message waits until its whole length fits; any other read
        until an eighth of the limit is free.  Returns whether the stream is
        still healthy.  Time held counts against ``assembly_timeout``: a peer
        held mid-message still has to finish it in time, so held streams do
        not stay forever.
        """
        announced = srx.assembler.announced
        # A large message: its whole length; anything else: an eighth.
        need = announced - srx.charge if announced > SMALL else max(SMALL, budget.hold // 8)
        with trio.move_on_at(srx.deadline) as deadline_scope:  # inf: no assembly_timeout
            await budget.wait(need)
        if deadline_scope.cancelled_caught:
            self._timed_out(srx, fail)
            return False
        return srx.life.phase in HEALTHY

    def _absorb(self, srx: StreamRx, data: bytes | bytearray, fail: FailStream) -> bool:
        """Parse what was read and steer the whole messages; False: the stream failed."""
        assembler = srx.assembler
        before = assembler.bytes
        try:
            messages = assembler.feed(data)
        except AssemblyError as exc:
            self._count(exc.messages, assembler.bytes - before)
            srx.held.extend(exc.messages)
            fail(exc.errno, str(exc), exc.__cause__, exc.partial)
            return False
        if self.budget is not None:
            self._charge(srx, self.budget, bool(messages))
        timeout = srx.timeout
        if timeout is not None:
            if not assembler.partial_size:
                srx.deadline = math.inf
            elif messages or srx.deadline == math.inf:
                # A new message started in this read.
                srx.deadline = trio.current_time() + timeout
        if messages:
            self._count(messages, assembler.bytes - before)
            done = self.steer(srx.life.handle, messages)
            if done < len(messages):
                srx.held = messages[done:]
        return True

    @staticmethod
    def _charge(srx: StreamRx, budget: Budget, completed: bool) -> None:
        """After a read: the partial message is charged (admission is the reader's)."""
        assembler = srx.assembler
        partial = assembler.partial_size
        if completed or not partial:
            srx.admitted = False  # a new message began (or none)
        if not partial:
            charge = 0
        elif srx.admitted:
            charge = assembler.announced
        else:
            charge = partial
        budget.recharge(srx.charge, charge)
        srx.charge = charge

    def _count(self, messages: list[bytes], nbytes: int) -> None:
        """Messages assembled: counted, and held against the budget until taken."""
        self.msgs += len(messages)
        self.bytes += nbytes
        if self.budget is not None:
            self.budget.queued += nbytes

    async def _pause(self, srx: StreamRx) -> None:
        """No socket has room: stop reading until one has (TCP backpressure)."""
        start = trio.current_time()
        srx.paused_since = start
        self.paused_readers += 1
        try:
            await self.space.wait()
        finally:
            self.paused_readers -= 1
            srx.paused_since = None
            paused = trio.current_time() - start
            srx.paused += paused
            # Time stopped by us does not count against the peer.
            srx.deadline += paused
