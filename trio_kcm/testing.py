"""Testing policies: drive one through trio-kcm's real schedulers, step by step.

:class:`PolicyHarness` builds what a mux builds -- the transmit and receive
schedulers, real :class:`~trio_kcm.KCMSocket` objects and real
:class:`~trio_kcm.AttachedStream` handles -- but starts no task and does no
I/O: each call is one step of what the mux does, done synchronously, with a
virtual clock.  So a test sees exactly the calls a policy gets in a real mux
(the same candidate sets, the same order of events, the same
``read_done``/``released`` rules, messages moving when a socket closes or a
stream fails), and can check the policy after each step::

    from trio_kcm.testing import PolicyHarness

    def test_my_policy_spreads_one_read():
        h = PolicyHarness(MyPolicy())
        a, b = h.socket(), h.socket()
        stream = h.attach()
        assert h.read(stream, [b"m1", b"m2"]) == [a, b]

It needs no Trio run: write plain test functions.  Messages are any bytes:
the harness checks nothing about their framing.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast, final

import trio
import trio.testing

from ._bugs import BugReport
from ._errors import StreamError
from ._lifecycle import Lifecycle, lowest_free
from ._outgoing import OutgoingCheck
from ._parsers import as_parser
from ._policy import Policy, resolve_policies
from ._receive import Receiver
from ._socket import KCMSocket, SocketType, close_socket
from ._stream import AttachedStream, life_of
from ._transmit import Transmitter

if TYPE_CHECKING:
    from ._mux import Mux

__all__ = ["PolicyHarness"]

_DEFAULT_BUFFER = 256 * 1024


class _Recorder:
    """The receive policy, as the receive scheduler calls it: picks are noted."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.batch_affine = policy.batch_affine
        self.picks: list[KCMSocket | None] = []

    def socket_added(self, sock: KCMSocket, /) -> None:
        self.policy.socket_added(sock)

    def socket_removed(self, sock: KCMSocket, /) -> None:
        self.policy.socket_removed(sock)

    def pick_socket(self, stream: AttachedStream | None, message: bytes, /) -> KCMSocket | None:
        sock = self.policy.pick_socket(stream, message)
        self.picks.append(sock)
        return sock

    def read_done(self, stream: AttachedStream | None, /) -> None:
        self.policy.read_done(stream)

    def socket_drained(self, sock: KCMSocket, nbytes: int, /) -> None:
        self.policy.socket_drained(sock, nbytes)

    def __repr__(self) -> str:
        return repr(self.policy)


def _any_length(data: memoryview) -> int:
    return len(data)  # never asked: the harness steers whole messages itself


@final
class PolicyHarness:
    """A mux without tasks, for testing a :class:`~trio_kcm.Policy` step by step.

    Args:
      policy: The policy for both directions: a :class:`~trio_kcm.Policy`
        object or a registered name, as for :func:`~trio_kcm.open_mux`.
      rx_policy: Overrides ``policy`` for receive (picking sockets).
      tx_policy: Overrides ``policy`` for transmit (picking streams).
      receive_buffer_size: The sockets' receive buffer, by default.
      send_buffer_size: The sockets' send buffer, by default.

    Sockets and streams are made by :meth:`socket` and :meth:`attach`; they
    are the real objects (``sock.mux`` is the harness).  A policy exception
    propagates out of the call that caused it.
    """

    def __init__(
        self,
        policy: str | Policy = "batch-affinity",
        *,
        rx_policy: str | Policy | None = None,
        tx_policy: str | Policy | None = None,
        receive_buffer_size: int = _DEFAULT_BUFFER,
        send_buffer_size: int = _DEFAULT_BUFFER,
    ) -> None:
        rx, tx = resolve_policies(policy, rx_policy, tx_policy)
        self._rx_policy = rx
        self._tx_policy = tx
        self._now = 0.0
        self._receive_buffer_size = receive_buffer_size
        self._send_buffer_size = send_buffer_size
        self._parser = as_parser(_any_length)
        bugs = BugReport()  # no nursery: an exception propagates to the caller only
        self._check = OutgoingCheck(self._parser, 1 << 62, validate=False)
        self._transmit = Transmitter(self, tx, bugs, clock=self._clock)
        self._recorder = _Recorder(rx)
        self._receive = Receiver(cast(Policy, self._recorder), bugs)
        self._lifecycle = Lifecycle(
            self,
            self._transmit,
            self._receive,
            bugs,
            auto_close=True,
            retry_in_doubt=True,
            close_timeout=0.0,
            tx_stall_timeout=None,
            clock=self._clock,
        )
        self._socket_indices: set[int] = set()

    def _clock(self) -> float:
        return self._now

    # -- time --------------------------------------------------------------------

    @property
    def now(self) -> float:
        """The virtual time, in seconds: what ``written`` durations are measured in."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the virtual clock forward."""
        if seconds < 0:
            raise ValueError("time does not go backwards")
        self._now += seconds

    # -- the policies ------------------------------------------------------------

    @property
    def rx_policy(self) -> Policy:
        """The policy that picks sockets."""
        return self._rx_policy

    @property
    def tx_policy(self) -> Policy:
        """The policy that picks streams."""
        return self._tx_policy

    # -- receive side: sockets -----------------------------------------------------

    def socket(
        self, *, receive_buffer_size: int | None = None, send_buffer_size: int | None = None
    ) -> KCMSocket:
        """Open a socket: the receive policy gets :meth:`~Policy.socket_added`."""
        sock = KCMSocket(
            cast("Mux", self),
            lowest_free(self._socket_indices),
            transmit=self._transmit,
            receive=self._receive,
            check=self._check,
            socket_type=SocketType.DGRAM,
            receive_buffer_size=(
                self._receive_buffer_size if receive_buffer_size is None else receive_buffer_size
            ),
            send_buffer_size=(
                self._send_buffer_size if send_buffer_size is None else send_buffer_size
            ),
            forget=self._forget,
        )
        return sock

    def sockets(self, count: int, **kwargs: int) -> list[KCMSocket]:
        """Open ``count`` sockets (keyword arguments as for :meth:`socket`)."""
        return [self.socket(**kwargs) for _ in range(count)]

    def _forget(self, sock: KCMSocket) -> None:
        self._socket_indices.discard(sock.index)

    @property
    def receive_candidates(self) -> tuple[KCMSocket, ...]:
        """The sockets the receive policy may pick now, in the order they became so."""
        return tuple(self._receive.candidates)

    @property
    def held(self) -> list[bytes]:
        """Messages waiting in the mux for a socket (moved, or held by the policy)."""
        return [message for message, _ in self._receive.hold]

    def read(self, stream: AttachedStream | None, messages: Sequence[bytes]) -> list[KCMSocket]:
        """One read of ``stream`` completed ``messages``: steer them, as the reader does.

        Messages that waited on the stream since an earlier read (no socket
        had room) go first.  Each message gets one
        :meth:`~Policy.pick_socket` (a ``batch_affine`` policy: one per run),
        then the read gets :meth:`~Policy.read_done`.  The read stops at the
        first message no socket takes: it and the rest wait on the stream.
        With ``stream=None`` the messages are steered as messages moving
        between sockets are: behind those already in :attr:`held`, one
        ``pick_socket(None, ...)`` each (batch-affine or not), then
        ``read_done(None)``; what no socket takes waits in :attr:`held`.

        Returns:
          The socket each message went to, in order (the waiting ones
          first); shorter than the messages when some wait.

        """
        recorder = self._recorder
        recorder.picks.clear()
        batch = [bytes(m) for m in messages]
        receive = self._receive
        receive.msgs += len(batch)
        receive.bytes += sum(map(len, batch))
        if stream is None:
            receive.hold.extend((m, cast("AttachedStream", None)) for m in batch)
            receive.steer_hold()  # one pick per message, batch-affine or not
            return [sock for sock in recorder.picks if sock is not None]
        srx = life_of(stream).rx
        batch = [*srx.held, *batch]
        srx.held = []
        # Each run's socket is a candidate now (none is added during a read).
        before = {sock: (rx, len(rx.queue)) for sock, rx in receive.candidates.items()}
        done = receive.steer(stream, batch)
        srx.held = batch[done:]
        picks = [sock for sock in recorder.picks if sock is not None]
        if self._rx_policy.batch_affine and len(batch) > 1:
            # One pick per run (as steer() decides): each run is as long as
            # what its socket got, and a run ends when its socket is full, so
            # no socket has two.
            runs = [(sock, len(before[sock][0].queue) - before[sock][1]) for sock in picks]
            return [sock for sock, count in runs for _ in range(count)]
        return picks

    def receive(self, sock: KCMSocket, max_messages: int = 1) -> list[bytes]:
        """The socket's application takes up to ``max_messages`` (``receive_many_nowait``)."""
        try:
            return sock.receive_many_nowait(max_messages)
        except trio.WouldBlock:
            return []

    def disable_receive(self, sock: KCMSocket) -> None:
        """``sock.disable_receive()``: its queue moves to other sockets."""
        sock.disable_receive()

    def enable_receive(self, sock: KCMSocket) -> None:
        """``sock.enable_receive()``."""
        sock.enable_receive()

    def close(self, sock: KCMSocket) -> None:
        """Close the socket: its queue moves to other sockets; what it sent still goes out."""
        close_socket(sock, by_mux=False)

    # -- transmit side: streams ----------------------------------------------------

    def attach(self) -> AttachedStream:
        """Attach a stream: the transmit policy gets :meth:`~Policy.stream_added`."""
        ours, _peer = trio.testing.memory_stream_pair()
        return self._lifecycle.attach(ours, self._parser, 1 << 62, None)

    def attach_many(self, count: int) -> list[AttachedStream]:
        """Attach ``count`` streams."""
        return [self.attach() for _ in range(count)]

    @property
    def transmit_candidates(self) -> tuple[AttachedStream, ...]:
        """The streams the transmit policy may pick now, in the order they became so."""
        return tuple(self._transmit.candidates)

    def send(self, sock: KCMSocket, messages: Sequence[bytes] = (b"m",)) -> AttachedStream | None:
        """``sock`` sends ``messages`` as one group (``send_many_nowait``).

        Returns:
          The stream the transmit policy queued it on, or ``None`` when it
          waits in the socket (no stream, or the policy picked none).

        Raises:
          trio.WouldBlock: The socket's send buffer is full.

        """
        group = [bytes(m) for m in messages]
        candidates = self._transmit.candidates
        before = {handle: len(stx.pending) for handle, stx in candidates.items()}
        sock.send_many_nowait(group)
        # The group went behind whatever of this socket's was waiting: to the
        # stream that grew last with it at its tail.
        for handle, stx in candidates.items():
            if len(stx.pending) > before.get(handle, 0) and stx.pending[-1].messages == group:
                return handle
        return None

    def send_to(self, sock: KCMSocket, stream: AttachedStream, message: bytes) -> None:
        """``sock.send_to_nowait(message, stream)``: queued there, the policy not asked."""
        sock.send_to_nowait(message, stream)

    def queued(self, stream: AttachedStream) -> list[list[bytes]]:
        """The groups queued on ``stream``, oldest first."""
        return [list(g.messages) for g in life_of(stream).tx.pending]

    def write(self, stream: AttachedStream, seconds: float = 0.0) -> list[bytes]:
        """The oldest group queued on ``stream`` is written, ``seconds`` from now.

        The clock moves by ``seconds``; the policy hears
        :meth:`~Policy.written` (with the time since the group was picked)
        and, when the socket has nothing left there, :meth:`~Policy.released`.

        Returns:
          The group's messages (empty if nothing was queued).

        """
        stx = life_of(stream).tx
        if not stx.pending:
            return []
        self.advance(seconds)
        group = stx.pending.popleft()
        self._transmit.written(stx, [group], group.nbytes)
        return list(group.messages)

    def write_all(self, stream: AttachedStream) -> int:
        """Write everything queued on ``stream``, group by group; return the groups."""
        count = 0
        while self.write(stream):
            count += 1
        return count

    def fail(self, stream: AttachedStream) -> StreamError:
        """The stream fails: :meth:`~Policy.stream_removed`, its groups picked for again.

        Returns:
          The :class:`~trio_kcm.StreamError` the mux reports.

        """
        life = life_of(stream)
        self._lifecycle.fail(life, errno.EPIPE, "failed by the test harness")
        self._lifecycle.release(life, closed=True)
        assert life.error is not None
        return life.error

    def unattach(self, stream: AttachedStream) -> None:
        """Unattach a healthy stream: its groups not started go to other streams."""
        life = life_of(stream)
        self._lifecycle.begin_unattach(life)
        self._lifecycle.end_unattach(life)
