"""The transmit scheduler's cold paths: a stream stalls, is unattached, fails; the mux
closes; groups are withdrawn unwritten.

:class:`Transmitter` (``_transmit.py``) is one object; this part of its class
holds what happens to a stream's queue when the stream leaves the transmit
candidates -- its groups move to other streams, are given up, or are reported
-- what closing asks of the transmit side, and how groups that wait to be
written leave before it: gone stale (:meth:`withdraw_late`) or taken back
by a requester's cancelled call (``Transmitter.withdraw``).  None of it is on the
per-message path.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import outcome
import trio

from ._state import Phase
from ._txstate import GONE, Aborted, Expiring, SocketTx, StreamTx, TxGroup, split_pinned

if TYPE_CHECKING:
    from ._expiry import Expiry
    from ._policy import Policy
    from ._stream import AttachedStream, StreamLife

__all__ = ["StreamsLeaving"]

_STALLED = Phase.STALLED


class StreamsLeaving:
    """Part of :class:`~._transmit.Transmitter`: streams leaving, and closing."""

    # The fields this part writes (Transmitter sets them up).
    __slots__ = ("expired", "outstanding", "progress", "retries")
    outstanding: int
    progress: trio.Event | None
    retries: int
    expired: int

    # Provided by Transmitter.
    policy: Policy
    expiry: Expiry
    candidates: dict[AttachedStream, StreamTx]
    streams: dict[StreamTx, None]
    sockets: dict[SocketTx, None]
    waiting: OrderedDict[SocketTx, None]

    def remove_candidate(self, stx: StreamTx) -> None:
        raise NotImplementedError

    def _dispatch_waiting(self) -> None:
        raise NotImplementedError

    def _wake_senders(self, tx: SocketTx) -> None:
        raise NotImplementedError

    @staticmethod
    def _target_error(life: StreamLife) -> BaseException | None:
        raise NotImplementedError

    def _reject_senders_to(self, stx: StreamTx) -> None:
        """Senders waiting to send_to a stream that failed or is leaving get its error."""
        for tx in list(self.sockets):
            waiters = tx.waiters
            if not waiters:
                continue
            for task, waiter in list(waiters.items()):
                if waiter.target is stx:
                    del waiters[task]
                    error = self._target_error(stx.life)  # one per task: tracebacks
                    assert error is not None  # failed or leaving
                    trio.lowlevel.reschedule(task, outcome.Error(error))
            # Those that were behind them may fit now.
            if waiters:
                self._wake_senders(tx)

    def _take_pending(self, stx: StreamTx, *, pinned: bool = True) -> list[TxGroup]:
        """Remove the groups queued on a stream that are not being written.

        With ``pinned=False``, groups sent to it with ``send_to`` stay.
        """
        pending = stx.pending  # in place: the writer holds it
        if pinned:
            groups = list(pending)
            pending.clear()
        else:
            groups, keep = split_pinned(pending)
            pending.clear()
            pending.extend(keep)
        for group in groups:
            stx.queued_bytes -= group.nbytes
            stx.queued_msgs -= len(group.messages)
        return groups

    def requeue(self, groups: list[TxGroup]) -> None:
        """Put groups back at the head of their sockets' queues and pick again."""
        if not groups:
            return
        for group in reversed(groups):
            group.sock.queue.appendleft(group)
            self.waiting[group.sock] = None
            self.retries += len(group.messages)
        self._dispatch_waiting()

    def _give_up(self, groups: list[TxGroup]) -> None:
        """Messages that will not be sent: free their buffer space."""
        for group in groups:
            if isinstance(group, Expiring) and group.expires != GONE:
                self.expiry.gone(group)
            tx = group.sock
            tx.queued_bytes -= group.nbytes
            tx.queued_msgs -= len(group.messages)
            self.outstanding -= group.nbytes
            if tx.waiters:
                self._wake_senders(tx)
            for flush in tx.flushes:
                flush.resolved(group)
        if groups and self.progress is not None:
            self.progress.set()  # closing's drain looks again

    def leave(self, stx: StreamTx) -> None:
        """The stream is being unattached: what the policy queued there goes elsewhere.

        Messages sent to it with ``send_to`` stay: they are written first, and
        senders waiting to ``send_to`` it get ClosedResourceError.
        """
        self.remove_candidate(stx)
        self.requeue(self._take_pending(stx, pinned=False))
        self._reject_senders_to(stx)
        stx.lot.unpark_all()

    def stall(self, stx: StreamTx) -> list[TxGroup]:
        """The stream stalled: not a candidate; return its groups that may move."""
        self.remove_candidate(stx)
        return self._take_pending(stx, pinned=False)

    def abort(self, stx: StreamTx) -> Aborted:
        """The stream failed: take everything off it (see :meth:`reroute`)."""
        self.remove_candidate(stx)
        inflight = stx.inflight or []
        stx.inflight = None
        stx.rest = None
        if inflight:
            stx.aborts += 1
            for group in inflight:
                stx.queued_bytes -= group.nbytes
                stx.queued_msgs -= len(group.messages)
        in_doubt = tuple(m for g in inflight for m in g.messages)
        # Groups sent to this stream with send_to go nowhere else: those not
        # started are unsent, those in flight are in doubt; neither is retried.
        retry, lost = split_pinned(self._take_pending(stx))
        unsent = tuple(m for g in lost for m in g.messages)
        inflight, lost_inflight = split_pinned(inflight)
        return Aborted(in_doubt, unsent, retry, inflight, lost + lost_inflight)

    def reroute(self, stx: StreamTx, aborted: Aborted, *, retry_in_doubt: bool) -> None:
        """After :meth:`abort` (and the stream's error is set): retry or give up."""
        if retry_in_doubt:
            self.requeue(aborted.inflight + aborted.retry)
        else:
            # Requeue first: space freed by giving up wakes senders, whose
            # messages must queue behind the retried ones.
            self.requeue(aborted.retry)
            self._give_up(aborted.inflight)
        self._give_up(aborted.lost)
        self._reject_senders_to(stx)

    def close_stream(self, stx: StreamTx) -> None:
        """The stream left the mux."""
        self.streams.pop(stx, None)
        if self.progress is not None:
            self.progress.set()

    def stalled_writes(self) -> bool:
        """Whether a stalled stream still has a write in progress."""
        return any(s.life.phase is _STALLED and s.inflight for s in self.streams)

    async def drain(self) -> None:
        """Wait until what was accepted is written, or nothing can write it."""
        try:
            while self.outstanding > 0 and (self.candidates or self.stalled_writes()):
                self.progress = trio.Event()
                await self.progress.wait()
        finally:
            self.progress = None

    def unsent(self) -> int:
        """Accepted messages not written: waiting for a stream, queued, in flight."""
        dropped = sum(len(g.messages) for tx in self.waiting for g in tx.queue)
        for stx in self.streams:
            groups = list(stx.pending) + list(stx.inflight or ())
            dropped += sum(len(g.messages) for g in groups)
        return dropped

    # -- withdrawn before they were written ---------------------------------------

    def withdraw_late(self, due: Sequence[TxGroup]) -> None:
        """Withdraw the groups of ``due`` that still wait: they went stale unwritten.

        A group waits in its socket's queue (for a stream) or in a stream's
        queue; one being written is not touched (it is never cut short) and
        goes out.  Withdrawn groups free their buffer space and are counted
        in their socket's ``expired``.
        """
        late = set(due)
        withdrawn: list[TxGroup] = []
        for tx in {g.sock for g in late}:
            queue = tx.queue
            if queue and any(g in late for g in queue):
                withdrawn.extend(g for g in queue if g in late)
                kept = [g for g in queue if g not in late]
                queue.clear()
                queue.extend(kept)
                if not queue:
                    self.waiting.pop(tx, None)
        for stx in self.streams:
            if stx.pending:
                gone = [g for g in stx.pending if g in late]
                if gone:
                    self._remove_pending(stx, gone)
                    withdrawn.extend(gone)
        if not withdrawn:
            return
        for group in withdrawn:
            n = len(group.messages)
            group.sock.expired += n
            self.expired += n
        self._give_up(withdrawn)

    def _withdraw(self, tx: SocketTx, stx: StreamTx, message: bytes) -> bool:
        """Take back ``message`` (this object), sent alone by ``tx`` to ``stx``, if unwritten.

        Returns whether it was still waiting in the stream's queue (and is
        withdrawn now: never written).
        """
        for group in stx.pending:
            if group.sock is tx and len(group.messages) == 1 and group.messages[0] is message:
                self._remove_pending(stx, [group])
                self._give_up([group])
                return True
        return False

    def _remove_pending(self, stx: StreamTx, groups: list[TxGroup]) -> None:
        """Take ``groups`` out of the stream's queue, unwritten.

        For a group the policy picked, its socket's burst on the stream ends
        as if it had been written (``released``), and the policy hears
        ``withdrawn``.
        """
        gone = set(groups)
        pending = stx.pending  # in place: the writer holds it
        kept = [g for g in pending if g not in gone]
        pending.clear()
        pending.extend(kept)
        handle = stx.life.handle
        candidate = handle in self.candidates
        owners = stx.owners
        for group in groups:
            stx.queued_bytes -= group.nbytes
            stx.queued_msgs -= len(group.messages)
            if group.pinned or not candidate:
                continue
            tx = group.sock
            self.policy.withdrawn(handle, tx.sock, group.nbytes)
            count = owners[tx] - 1
            if count:
                owners[tx] = count
            else:
                del owners[tx]
                stx.unreserved += 1
                self.policy.released(handle, tx.sock)
