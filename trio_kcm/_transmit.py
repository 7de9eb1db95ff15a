"""The transmit scheduler: accepted messages -> a stream picked by the policy -> one write.

A message goes through three places, each owned here:

1. a socket's *send buffer* (:class:`SocketTx`): :meth:`Transmitter.send_now`
   accepts it while the buffer is below its size, else the sender waits in
   line (:meth:`Transmitter.wait_send`) until written messages free room;
2. a stream's *queue* (:class:`StreamTx`): the transmit policy picks the
   stream for each group of messages (one message, a ``send_many``, a
   ``batch()``), from the exact set of transmit candidates this scheduler
   keeps; a group that finds no stream waits in its socket's queue, in order;
3. one *write*: the stream's writer task (:meth:`Transmitter.writer`) joins
   queued groups into one ``send_all``.  Only it writes -- or, for a plain
   TCP stream whose writer is idle, the sending task itself, at once, with a
   non-blocking ``os.write`` (the *eager write*); what the kernel does not
   take is finished by the writer before anything else.  So two messages never
   interleave on a stream.

A group leaves a stream's queue only whole (written) or, when the stream
fails, with its write's other groups as *in doubt* (:meth:`Transmitter.abort`).
User cancellation reaches only senders still waiting for room: messages that
were never accepted.

Entry points -- the methods a user's task calls -- are guarded once against
policy bugs (see ``_bugs.py``) and protected from KeyboardInterrupt, as
trio's memory channels protect their bookkeeping; the methods they call in
turn are neither.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, final

import outcome
import trio
from trio.lowlevel import enable_ki_protection

from ._bugs import BugReport
from ._expiry import Expiry
from ._policy import Policy
from ._state import Phase
from ._stream import life_of, raise_socket_error
from ._turns import Turns
from ._txleave import StreamsLeaving
from ._txstate import (
    NEVER,
    Batch,
    Expiring,
    ExpiringPinnedTxGroup,
    ExpiringTxGroup,
    Flush,
    PinnedTxGroup,
    SendWaiter,
    SocketTx,
    StreamTx,
    TxGroup,
    collect,
)

if TYPE_CHECKING:
    from ._socket import KCMSocket
    from ._stream import AttachedStream, StreamLife

__all__ = ["Transmitter"]


_ACTIVE = Phase.ACTIVE
_STALLED = Phase.STALLED


@final
class Transmitter(StreamsLeaving):
    """The transmit scheduler of one mux: its policy, candidates, buffers and writers."""

    __slots__ = (
        "bugs",
        "bytes",
        "candidate_lot",
        "candidates",
        "clock",
        "eager",
        "eager_ok",
        "expiry",
        "msgs",
        "owner",
        "policy",
        "sockets",
        "streams",
        "timed",
        "turns",
        "waiting",
        "windows",
    )

    def __init__(
        self,
        owner: object,
        policy: Policy,
        bugs: BugReport,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.owner = owner  # the mux, to tell its handles from others'
        self.policy = policy
        self.bugs = bugs
        self.clock = clock  # times groups for written(): trio's, or a harness's
        # Only a policy that overrides written() needs each group timed.
        self.timed = getattr(type(policy), "written", None) is not Policy.written
        #: The transmit candidates, exactly: attached, healthy, not stalled,
        #: not unattaching, the mux not closing.
        self.candidates: dict[AttachedStream, StreamTx] = {}
        #: Tasks waiting for a candidate (a requester's calls, none attached).
        self.candidate_lot = trio.lowlevel.ParkingLot()
        self.streams: dict[StreamTx, None] = {}
        self.sockets: dict[SocketTx, None] = {}
        #: Sockets with groups waiting for a stream.
        self.waiting: OrderedDict[SocketTx, None] = OrderedDict()
        self.outstanding = 0  # bytes accepted and not written (or given up)
        # Idle streams the sending task may write to at once (_write_eagerly);
        # noted only while send_now is accepting (eager_ok).
        self.eager: list[StreamTx] = []
        self.eager_ok = False
        # Streams a sending task wrote to itself, until its schedule point.
        self.windows: list[StreamTx] = []
        #: The mux's record of its last yield: which sends skip their
        #: schedule point (see _turns.py); the sockets' receives share it.
        self.turns = Turns()
        #: The times of groups that go stale unwritten (sockets with a TTL).
        self.expiry = Expiry()
        #: Set at each step towards an empty mux, while closing waits for one.
        self.progress: trio.Event | None = None
        self.msgs = 0
        self.bytes = 0
        self.retries = 0
        self.expired = 0

    # -- sockets -----------------------------------------------------------------

    def open_socket(
        self, sock: KCMSocket, limit: int, ttl: float | None = None, at_deadline: bool = False
    ) -> SocketTx:
        """A new socket's transmit side (``ttl``, ``at_deadline``: see :meth:`stale_able`)."""
        tx = SocketTx(sock, limit, ttl, at_deadline)
        self.sockets[tx] = None
        return tx

    @enable_ki_protection
    def close_socket(self, tx: SocketTx) -> None:
        """Senders still waiting get ClosedResourceError; what was accepted goes out."""
        self.sockets.pop(tx, None)
        while tx.waiters:
            task, _ = tx.waiters.popitem(last=False)
            trio.lowlevel.reschedule(task, _closed_error())
        for flush in tx.flushes:
            flush.closed = True
            flush.done.set()
        try:
            for batch in list(tx.batches.values()):
                self._flush(tx, batch)
        except BaseException as exc:
            self.bugs.report(exc)
            raise

    # -- accepting ---------------------------------------------------------------

    @enable_ki_protection
    def try_send(self, tx: SocketTx, messages: list[bytes], nbytes: int) -> bool:
        """Accept a group now if the buffer allows; False if the sender must wait."""
        try:
            return self._try_send(tx, messages, nbytes)
        except BaseException as exc:
            self.bugs.report(exc)
            raise

    def _try_send(self, tx: SocketTx, messages: list[bytes], nbytes: int) -> bool:
        batch = tx.batches.get(trio.lowlevel.current_task()) if tx.batches else None
        if tx.waiters or tx.queued_bytes >= tx.limit:
            if batch is None or not batch.messages:
                return False
            # Flush what the batch gathered before waiting for memory.
            self._flush(tx, batch)
            if tx.waiters or tx.queued_bytes >= tx.limit:
                return False
        self._accept(tx, messages, nbytes, batch)
        return True

    @enable_ki_protection
    def try_send_to(
        self, tx: SocketTx, target: AttachedStream, messages: list[bytes], nbytes: int
    ) -> bool:
        """Accept a group for ``target`` now if the buffer allows; False: wait.

        Raises:
          ValueError, trio.BrokenResourceError, trio.ClosedResourceError: See
            :meth:`check_target`.

        """
        stx = self.check_target(target)
        if tx.waiters or tx.queued_bytes >= tx.limit:
            return False
        try:
            self._accept_to(tx, stx, messages, nbytes)
        except BaseException as exc:
            self.bugs.report(exc)
            raise
        return True

    @enable_ki_protection
    def send_now(
        self,
        tx: SocketTx,
        messages: list[bytes],
        nbytes: int,
        target: AttachedStream | None = None,
    ) -> bool:
        """Accept a group now if the buffer allows (False: the sender must wait).

        For the async send methods: what this queued on an idle TCP stream is
        then written at once, from the sending task (:meth:`_write_eagerly`).

        Raises:
          ValueError, trio.BrokenResourceError, trio.ClosedResourceError: For
            ``target``, see :meth:`check_target`.

        """
        stx = None if target is None else self.check_target(target)
        accepted = False
        self.eager_ok = True
        try:
            try:
                if stx is None:
                    accepted = self._try_send(tx, messages, nbytes)
                elif not (tx.waiters or tx.queued_bytes >= tx.limit):
                    self._accept_to(tx, stx, messages, nbytes)
                    accepted = True
            finally:
                self.eager_ok = False
                if self.eager:
                    self._write_eagerly()
        except BaseException as exc:
            self.bugs.report(exc)
            raise
        finally:
            if not accepted and self.windows:
                # The sender will wait (or raise): a schedule point anyway.
                self.close_windows()
        return accepted

    def hold(self, tx: SocketTx, batch: Batch, message: bytes) -> None:
        """Accept one message into ``batch`` (the caller checked there is room)."""
        n = len(message)
        tx.queued_bytes += n
        tx.queued_msgs += 1
        tx.msgs += 1
        tx.bytes += n
        self.outstanding += n
        batch.messages.append(message)
        batch.nbytes += n

    async def wait_send(
        self,
        tx: SocketTx,
        messages: list[bytes],
        nbytes: int,
        target: AttachedStream | None = None,
    ) -> None:
        """Wait in line until the group is accepted (by a task that freed room).

        Cancelled, the sender leaves the line: its messages were never accepted.
        """
        task = trio.lowlevel.current_task()
        stx = None if target is None else life_of(target).tx
        # send_to is not held by batch().
        batch = tx.batches.get(task) if stx is None and tx.batches else None
        deadline = trio.current_effective_deadline() if tx.at_deadline else NEVER
        tx.waiters[task] = SendWaiter(messages, nbytes, batch, stx, deadline)

        def abort(_: object) -> trio.lowlevel.Abort:
            # Not accepted yet: withdrawing is leaving the line.
            tx.waiters.pop(task, None)
            return trio.lowlevel.Abort.SUCCEEDED

        try:
            await trio.lowlevel.wait_task_rescheduled(abort)
        finally:
            self.yielded()

    async def yield_turn(self) -> None:
        """The schedule point of a socket call that completed and may not skip it.

        The caller (a send or a receive) asked :meth:`Turns.skip
        <trio_kcm._turns.Turns.skip>` first.  A stream the sending task wrote
        to itself keeps a *window*
        open until the task yields: sends to it in the meantime (the rest of
        this task's run of sends that skip their schedule point, and other
        tasks' sends in the same pass of the scheduler) are queued and wake
        its writer, which writes them all together, rather than each making a
        write of its own.  The windows close when the yield returns
        (:meth:`yielded`).
        """
        try:
            await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self.yielded()

    def yielded(self) -> None:
        """A task of the mux's sockets yielded and is back: windows close, turns restart."""
        self.turns.yielded()
        if self.windows:
            self.close_windows()

    def close_windows(self) -> None:
        """Close the windows of a send that has no schedule point (in ``batch()``)."""
        opened, self.windows = self.windows, []
        for stx in opened:
            stx.window = False

    @enable_ki_protection
    def flush_batch(self, tx: SocketTx, batch: Batch) -> None:
        """A ``batch()`` block ended: its messages go to a stream as one group."""
        try:
            self._flush(tx, batch)
        except BaseException as exc:
            self.bugs.report(exc)
            raise

    def _flush(self, tx: SocketTx, batch: Batch) -> None:
        group = None
        if batch.messages:
            if tx.expiring:
                group = self.stale_able(tx, batch.messages, batch.nbytes, None, pinned=False)
            else:
                group = TxGroup(tx, batch.messages, batch.nbytes)
            batch.messages = []
            batch.nbytes = 0
        if tx.flushes:
            for flush in tx.flushes:
                flush.batch_flushed(batch, group)
        if group is not None:
            self._dispatch(tx, group)

    # -- flush (KCMSocket.flush) -----------------------------------------------

    def begin_flush(self, tx: SocketTx, task: trio.lowlevel.Task) -> Flush | None:
        """What ``task``'s flush of ``tx`` waits for (None: nothing).

        Everything the socket accepted: the groups waiting for a stream, queued
        on streams or in flight, and the messages other tasks' open batches
        hold (the flushing task's own batch goes out first, as the kernel
        flushes a pending batch before it waits).
        """
        own = tx.batches.get(task)
        if own is not None and own.messages:
            self.flush_batch(tx, own)
        groups: dict[TxGroup, None] = dict.fromkeys(tx.queue)
        for stx in self.streams:
            for group in stx.pending:
                if group.sock is tx:
                    groups[group] = None
            for group in stx.inflight or ():
                if group.sock is tx:
                    groups[group] = None
        batches = {b for t, b in tx.batches.items() if t is not task and b.messages}
        if not groups and not batches:
            return None
        flush = Flush(groups, batches)
        tx.flushes.append(flush)
        return flush

    @staticmethod
    def end_flush(tx: SocketTx, flush: Flush) -> None:
        """The flushing task is done waiting (or was cancelled)."""
        if flush in tx.flushes:
            tx.flushes.remove(flush)

    def _count_accepted(self, tx: SocketTx, n: int, nbytes: int) -> None:
        tx.queued_bytes += nbytes
        tx.queued_msgs += n
        tx.msgs += n
        tx.bytes += nbytes
        self.outstanding += nbytes

    def _accept(
        self,
        tx: SocketTx,
        messages: list[bytes],
        nbytes: int,
        batch: Batch | None,
        deadline: float | None = None,
    ) -> None:
        """Accept a group (into ``batch`` if there is one); ``deadline``: see :meth:`stale_able`."""
        self._count_accepted(tx, len(messages), nbytes)
        if batch is not None:
            batch.messages.extend(messages)
            batch.nbytes += nbytes
        elif tx.expiring:
            self._dispatch(tx, self.stale_able(tx, messages, nbytes, deadline, pinned=False))
        else:
            self._dispatch(tx, TxGroup(tx, messages, nbytes))

    def stale_able(
        self,
        tx: SocketTx,
        messages: list[bytes],
        nbytes: int,
        deadline: float | None,
        *,
        pinned: bool,
    ) -> TxGroup:
        """A new group of an expiring socket, with its time, as it is accepted.

        The earlier of: ``ttl`` seconds from now, and (``at_deadline``) its
        sender's deadline -- ``deadline``, noted when the sender began to
        wait for room, or None: the current task is the sender.
        """
        if deadline is None:
            deadline = trio.current_effective_deadline() if tx.at_deadline else NEVER
        if tx.ttl is not None:
            deadline = min(deadline, trio.current_time() + tx.ttl)
        if deadline == NEVER:
            return PinnedTxGroup(tx, messages, nbytes) if pinned else TxGroup(tx, messages, nbytes)
        kind = ExpiringPinnedTxGroup if pinned else ExpiringTxGroup
        group = kind(tx, messages, nbytes, deadline)
        self.expiry.add(group)
        return group

    def _wake_senders(self, tx: SocketTx) -> None:
        """Hand freed send-buffer space to waiting senders, first come first served."""
        waiters = tx.waiters
        while waiters and tx.queued_bytes < tx.limit:
            task, waiter = waiters.popitem(last=False)
            target = waiter.target
            if target is None:
                self._accept(tx, waiter.messages, waiter.nbytes, waiter.batch, waiter.deadline)
            else:
                error = self._target_error(target.life)
                if error is not None:
                    trio.lowlevel.reschedule(task, outcome.Error(error))
                    continue
                self._accept_to(tx, target, waiter.messages, waiter.nbytes, waiter.deadline)
            trio.lowlevel.reschedule(task)

    # -- pinned to a stream (send_to) --------------------------------------------

    def check_target(self, handle: AttachedStream) -> StreamTx:
        """Return the stream ``send_to`` may send on; else raise what it raises.

        Raises:
          ValueError: ``handle`` is not a stream of this mux.
          trio.BrokenResourceError: It failed (its error is ``__cause__``).
          trio.ClosedResourceError: It was (or is being) unattached.

        """
        life = life_of(handle)
        if life.owner is not self.owner:
            raise ValueError(f"{handle!r} is not attached to this mux")
        error = self._target_error(life)
        if error is not None:
            raise error
        return life.tx

    @staticmethod
    def _target_error(life: StreamLife) -> BaseException | None:
        phase = life.phase
        if phase is _ACTIVE or phase is _STALLED:
            return None
        if phase is Phase.FAILED or phase is Phase.DISCARDED:
            error = trio.BrokenResourceError(f"{life.handle!r} failed")
            error.__cause__ = life.error
            return error
        return trio.ClosedResourceError(f"{life.handle!r} was unattached")

    def _accept_to(
        self,
        tx: SocketTx,
        stx: StreamTx,
        messages: list[bytes],
        nbytes: int,
        deadline: float | None = None,
    ) -> None:
        """Accept a group for ``stx``: queued there, whatever the policy thinks.

        The policy neither picks it nor hears of it (no ``written``, no
        ``released``); its bytes count in ``handle.tx_queued_bytes``.
        """
        n = len(messages)
        self._count_accepted(tx, n, nbytes)
        # Not timed: the policy never hears of it (picked_at is for written()).
        if tx.expiring:
            group = self.stale_able(tx, messages, nbytes, deadline, pinned=True)
        else:
            group = PinnedTxGroup(tx, messages, nbytes)
        stx.pending.append(group)
        stx.queued_bytes += nbytes
        stx.queued_msgs += n
        self._wake_writer(stx)

    # -- scheduling --------------------------------------------------------------

    def _pick(self, tx: SocketTx, group: TxGroup) -> StreamTx | None:
        """Ask the policy; return the picked candidate's side, or None for "none now"."""
        picked = self.policy.pick_stream(tx.sock, group.messages, group.nbytes)
        if picked is None:
            return None
        try:
            return self.candidates[picked]
        except (KeyError, TypeError):
            raise RuntimeError(
                f"policy {self.policy!r} picked {picked!r}, which is not a transmit candidate"
            ) from None

    def _dispatch(self, tx: SocketTx, group: TxGroup) -> None:
        if tx.queue or not self.candidates:
            # Keep the socket's order: behind what already waits for a stream.
            tx.queue.append(group)
            self.waiting[tx] = None
            if self.candidates:
                self._drain_queue(tx)
            return
        stx = self._pick(tx, group)
        if stx is None:
            tx.queue.append(group)
            self.waiting[tx] = None
            return
        self._assign(stx, group)

    def _assign(self, stx: StreamTx, group: TxGroup) -> None:
        if self.timed:
            group.picked_at = self.clock()
        stx.pending.append(group)
        stx.queued_bytes += group.nbytes
        stx.queued_msgs += len(group.messages)
        owners = stx.owners
        tx = group.sock
        count = owners.get(tx, 0)
        if not count:
            stx.reserved += 1
        owners[tx] = count + 1
        self._wake_writer(stx)

    def _drain_queue(self, tx: SocketTx) -> bool:
        """Dispatch a socket's waiting groups in order; True if none is left."""
        queue = tx.queue
        while queue:
            stx = self._pick(tx, queue[0])
            if stx is None:
                return False
            self._assign(stx, queue.popleft())
        self.waiting.pop(tx, None)
        return True

    def _dispatch_waiting(self) -> None:
        if self.candidates:
            for tx in list(self.waiting):
                self._drain_queue(tx)

    # -- streams: candidacy and leaving ------------------------------------------

    def open_stream(self, life: StreamLife) -> StreamTx:
        """A new stream's transmit side (not a candidate yet: see add_candidate)."""
        stx = StreamTx(life)
        self.streams[stx] = None
        return stx

    def add_candidate(self, stx: StreamTx) -> None:
        """The policy gets the stream (again); messages waiting for one go out."""
        handle = stx.life.handle
        self.candidates[handle] = stx
        self.policy.stream_added(handle)
        self._dispatch_waiting()
        if self.candidate_lot:
            self.candidate_lot.unpark_all()
        if self.progress is not None:
            self.progress.set()

    @enable_ki_protection
    def withdraw(self, tx: SocketTx, stx: StreamTx, message: bytes) -> bool:
        """Take back ``message``, sent alone by ``tx`` to ``stx``, if it is still unwritten.

        Returns whether it was (it is withdrawn now: never written).
        """
        try:
            return self._withdraw(tx, stx, message)
        except BaseException as exc:
            self.bugs.report(exc)
            raise

    async def wait_for_candidate(self) -> None:
        """Wait until a stream becomes a candidate, or :meth:`wake_candidate_waiters`."""
        await self.candidate_lot.park()

    def wake_candidate_waiters(self) -> None:
        """Wake the tasks in :meth:`wait_for_candidate` (they look again)."""
        self.candidate_lot.unpark_all()

    def remove_candidate(self, stx: StreamTx) -> None:
        """The policy loses the stream; its bursts end."""
        handle = stx.life.handle
        if self.candidates.pop(handle, None) is not None:
            stx.unreserved += len(stx.owners)
            stx.owners.clear()
            self.policy.stream_removed(handle)
            if self.progress is not None:
                self.progress.set()

    # -- writing -----------------------------------------------------------------

    def _wake_writer(self, stx: StreamTx) -> None:
        lot = stx.lot
        if lot:
            if self.eager_ok and not stx.window and stx.eager_send is not None:
                # The writer is idle: the sending task writes at once
                # (_write_eagerly), and wakes the writer only if it must.
                self.eager.append(stx)
            else:
                lot.unpark()

    def _write_eagerly(self) -> None:
        """Write, from the sending task, what was just queued on idle streams.

        Called by :meth:`send_now` right after it tried to accept, whatever
        came of it: a stream noted here was not woken, so its writer is woken
        now unless this writes all it has.  A write that the kernel takes whole
        is done here and then, and opens a window (see :meth:`yield_turn`);
        what the kernel does not take is left to the stream's writer task,
        which finishes that write before any other (so the message stays
        whole).  An error is left to the writer too: it will meet it again and
        fail the stream as usual.
        """
        eager = self.eager
        try:
            while eager:
                stx = eager.pop()
                pending = stx.pending
                phase = stx.life.phase
                if (
                    not pending
                    or stx.inflight is not None
                    or (phase is not _ACTIVE and phase is not _STALLED)
                    or stx.eager_send is None
                ):
                    if pending and stx.lot:
                        stx.lot.unpark()
                    continue
                groups, size, data = collect(pending)
                stx.inflight = groups
                try:
                    sent = stx.eager_send(data)
                except OSError:  # BlockingIOError included
                    sent = 0
                if sent == len(data):
                    stx.inflight = None
                    stx.window = True
                    self.windows.append(stx)
                    self.written(stx, groups, size)
                else:
                    stx.rest = (memoryview(data)[sent:], size)
                    if stx.lot:
                        stx.lot.unpark()
        finally:
            for stx in eager:
                if stx.lot:
                    stx.lot.unpark()
            eager.clear()

    async def writer(self, stx: StreamTx, fail: Callable[[BaseException], None]) -> None:
        """The stream's writer task: its queue -> one ``send_all`` per batch of groups.

        It parks while the queue is empty; whoever queues wakes it (or writes
        eagerly instead).  It finishes a write the sending task began before
        anything else.  A failed write calls ``fail`` (which fails the
        stream and cancels this task's scope); it returns when the stream is
        unattaching and nothing is left to write.  It is never cancelled by a
        user: only by its stream's failure or the mux closing.
        """
        pending = stx.pending
        transport = stx.life.transport
        send, sock = stx.eager_send, stx.plain
        while True:
            data: bytes | memoryview
            if stx.rest is not None:
                # The rest of a write the sending task began (_write_eagerly).
                data, size = stx.rest
                stx.rest = None
                groups = stx.inflight
                assert groups is not None
            elif not pending:
                if stx.life.phase is Phase.UNATTACHING:
                    return
                await stx.lot.park()
                stx.window = False
                # This task runs only once the task that woke it has yielded.
                self.turns.yielded()
                continue
            else:
                groups, size, data = collect(pending)
                stx.inflight = groups
            try:
                if send is None or sock is None:
                    await transport.send_all(data)
                else:
                    await _write_all(send, sock, data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                fail(exc)
                return
            if stx.inflight is not groups:
                # The stream failed meanwhile; abort() took these as in doubt.
                return
            stx.inflight = None
            self.written(stx, groups, size)
            if pending:
                # Completion accepted waiting senders' messages here: let
                # other tasks run before writing them.
                await trio.lowlevel.cancel_shielded_checkpoint()

    def written(self, stx: StreamTx, groups: list[TxGroup], size: int) -> None:
        """Completion: a write of ``groups`` (``size`` bytes) on ``stx`` is done.

        Called by the writer after its ``send_all``, and by the sending task
        after an eager write the kernel took whole.  It counts the messages,
        frees their send-buffer space and hands it to waiting senders (whose
        messages it accepts for them), tells the policy ``written`` (for a
        policy that listens) and ``released`` when a socket has nothing left
        on the stream -- not for a stream the policy no longer has, nor for
        ``send_to`` groups -- and dispatches groups that waited for a stream.
        """
        timed = self.timed
        now = self.clock() if timed else 0.0
        nmsgs = 0
        policy = self.policy
        owners = stx.owners
        handle = stx.life.handle
        candidate = handle in self.candidates
        expiring = self.expiry.live  # any stale-able group not yet written
        stx.queued_bytes -= size
        stx.bytes += size
        self.bytes += size
        self.outstanding -= size
        for group in groups:
            tx = group.sock
            n = len(group.messages)
            nmsgs += n
            if expiring and isinstance(group, Expiring):
                self.expiry.gone(group)
            tx.queued_bytes -= group.nbytes
            tx.queued_msgs -= n
            # The policy hears nothing more of a removed stream, nor of send_to.
            if candidate and not group.pinned:
                if timed:
                    policy.written(handle, tx.sock, group.nbytes, now - group.picked_at)
                count = owners[tx] - 1
                if count:
                    owners[tx] = count
                else:
                    del owners[tx]
                    stx.unreserved += 1
                    policy.released(handle, tx.sock)
            if tx.waiters:
                self._wake_senders(tx)
            if tx.flushes:
                for flush in tx.flushes:
                    flush.resolved(group)
        stx.queued_msgs -= nmsgs
        stx.msgs += nmsgs
        self.msgs += nmsgs
        if self.waiting:
            self._dispatch_waiting()
        if self.progress is not None:
            self.progress.set()


async def _write_all(
    send: Callable[[bytes | memoryview], int],
    sock: trio.socket.SocketType,
    data: bytes | memoryview,
) -> None:
    """``send_all`` for a plain socket, with no schedule point after its last byte.

    The writer then completes the write (``written``) in the same step as the
    system call that finished it: a stream that fails meanwhile -- its peer
    read the replies and hung up, and the reader saw that first -- cannot
    report messages that were written as in doubt, as a ``send_all`` (whose
    last send is followed by a schedule point) could.  Errors are reported
    as ``SocketStream.send_all`` reports them.
    """
    view = memoryview(data)
    while True:
        try:
            sent = send(view)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            continue
        except OSError as exc:
            raise_socket_error(exc)
        if sent >= len(view):
            return
        view = view[sent:]
        # Part of it went: let the reader drain some, then try again (as
        # send_all does); wait for the socket only if it is still full.
        await trio.lowlevel.cancel_shielded_checkpoint()


def _closed_error() -> outcome.Error:
    # A new exception for each task: a raised exception collects its traceback.
    return outcome.Error(trio.ClosedResourceError("the KCM socket was closed"))
