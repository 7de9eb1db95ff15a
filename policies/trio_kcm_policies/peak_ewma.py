"""``peak-ewma``: latency-aware, as Finagle's and Linkerd's balancers are."""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Generic, TypeVar

import trio

from trio_kcm import Policy

from ._common import Candidates, is_full, make_rng, positive_number

if TYPE_CHECKING:
    from trio_kcm import AttachedStream, KCMSocket

__all__ = ["PeakEwma"]

T = TypeVar("T")


class Estimate:
    """A peak-sensitive, time-decayed moving average of latency samples.

    Between samples the estimate decays towards zero with time constant
    ``tau``: ``value(t) = est * exp(-(t - stamp) / tau)``, so a member that
    was slow once, and is avoided since, is eventually tried again.  A sample
    ``x`` at time ``t``, with ``w = exp(-(t - stamp) / tau)``:

    * above the decayed value (``x > est * w``), and ``peak`` is true:
      ``est = x`` at once -- the estimate follows a spike immediately;
    * otherwise ``est = est * w + x * (1 - w)``: samples pull it towards them
      with weight growing with the time since the previous one, so a run of
      lower samples brings it down with time constant ``tau`` (and a steady
      latency ``x`` gives ``est = x``).

    The first sample replaces the initial value whatever it is: that was a
    guess, this is a measurement.  Reading it has no side effect.
    """

    __slots__ = ("est", "measured", "peak", "stamp")

    def __init__(self, initial: float, now: float, *, peak: bool = True) -> None:
        self.est = initial
        self.stamp = now
        self.measured = False
        self.peak = peak

    def value(self, now: float, tau: float) -> float:
        dt = now - self.stamp
        return self.est * math.exp(-dt / tau) if dt > 0 else self.est

    def sample(self, x: float, now: float, tau: float) -> None:
        if not self.measured:
            self.est = x
            self.measured = True
        else:
            dt = now - self.stamp
            w = math.exp(-dt / tau) if dt > 0 else 1.0
            decayed = self.est * w
            self.est = x if self.peak and x > decayed else decayed + x * (1.0 - w)
        if now > self.stamp:
            self.stamp = now


class _Member(Generic[T]):
    """A member's latency estimate and its outstanding work, oldest first."""

    __slots__ = ("est", "head_done", "obj", "outstanding")

    def __init__(self, obj: T, est: Estimate) -> None:
        self.obj = obj
        self.est = est
        #: (when it was picked, its size) of each message (or group) not done yet.
        self.outstanding: deque[tuple[float, int]] = deque()
        #: Bytes of the oldest outstanding message already drained.
        self.head_done = 0

    def cost(self, now: float, tau: float) -> float:
        """Latency estimate times (outstanding + 1).

        The estimate is at least the age of the oldest outstanding item: a
        member whose worker has stopped looks slower every moment, long
        before its first late sample arrives.
        """
        latency = self.est.value(now, tau)
        outstanding = self.outstanding
        if outstanding:
            age = now - outstanding[0][0]
            if age > latency:
                latency = age
        return latency * (len(outstanding) + 1)


class PeakEwma(Policy):
    """Latency-aware: two random candidates, the one with the lower peak-EWMA cost.

    The load balancer of Finagle and Linkerd, applied to both directions.
    Each member keeps an estimate of its latency: for a socket, how long a
    message waits in its receive queue (from the pick that delivers it to the
    ``socket_drained`` that takes it out); for a stream, how long a group takes
    from its pick to the end of its write (``written``'s ``seconds``).  The
    estimate is a *peak* EWMA: a sample above it replaces it at once (a
    latency spike is acted on immediately), lower samples bring it down with
    time constant ``decay``; while no sample comes it decays towards zero, so
    an avoided member is eventually tried again.  Until its oldest
    outstanding message is done, a member's estimate is at least that
    message's age, so a stalled worker is avoided before it reports back.
    The *cost* of a member is ``estimate * (outstanding + 1)``, with
    outstanding the messages (groups) picked and not yet drained (written);
    each pick draws two candidates at random and takes the cheaper (ties: the
    fewer outstanding).  O(1) per pick.

    A member with no measurement yet starts at ``initial`` if given, or else at
    the running average latency of the same direction (zero before any
    sample), so a newcomer is neither flooded nor starved; its first sample
    replaces that guess.  A socket keeps its estimate while it is full;
    messages moved away from a disabled or closed socket are not samples.
    Time is ``trio.current_time()``, so the policy runs on a ``MockClock``.

    Options:
      decay: Time constant, in seconds, with which estimates fall (default 10).
      initial: Estimate (seconds) of an unmeasured member; default: the
        running average.
      seed: Seed for a private ``random.Random``.
      rng: A ``random.Random`` to draw from instead (not with ``seed``).
      clock: A function returning the time in seconds (default
        ``trio.current_time``).
    """

    def __init__(
        self,
        *,
        decay: float = 10.0,
        initial: float | None = None,
        seed: int | str | bytes | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._tau = positive_number("peak-ewma", "decay", decay)
        if initial is not None:
            if isinstance(initial, bool) or not isinstance(initial, (int, float)):
                raise TypeError(
                    f"peak-ewma: initial= must be a number or None, not {type(initial).__name__}"
                )
            if not (math.isfinite(initial) and initial >= 0):
                raise ValueError(f"peak-ewma: initial= must be finite and >= 0, not {initial!r}")
            initial = float(initial)
        self._initial = initial
        self._rng = make_rng("peak-ewma", seed, rng)
        if clock is not None and not callable(clock):
            raise TypeError(f"peak-ewma: clock= must be callable, not {type(clock).__name__}")
        self._clock: Callable[[], float] = clock if clock is not None else trio.current_time
        self._rx: Candidates[_Member[KCMSocket]] = Candidates()
        self._rx_members: dict[int, _Member[KCMSocket]] = {}
        self._rx_average: Estimate | None = None
        self._tx: Candidates[_Member[AttachedStream]] = Candidates()
        self._tx_members: dict[int, _Member[AttachedStream]] = {}
        self._tx_average: Estimate | None = None

    def _new_estimate(self, average: Estimate | None, now: float) -> Estimate:
        if self._initial is not None:
            guess = self._initial
        elif average is not None:
            guess = average.value(now, self._tau)
        else:
            guess = 0.0
        return Estimate(guess, now)

    def _choose(self, candidates: Candidates[_Member[T]], now: float) -> _Member[T] | None:
        pair = candidates.two(self._rng)
        if pair is None:
            return None
        a, b = pair
        if a is b:
            return a
        tau = self._tau
        ca = a.cost(now, tau)
        cb = b.cost(now, tau)
        if cb < ca or (cb == ca and len(b.outstanding) < len(a.outstanding)):
            return b
        return a

    def _observe(self, member: _Member[T], latency: float, now: float, rx: bool) -> None:
        tau = self._tau
        member.est.sample(latency, now, tau)
        average = self._rx_average if rx else self._tx_average
        if average is None:
            average = Estimate(0.0, now, peak=False)
            if rx:
                self._rx_average = average
            else:
                self._tx_average = average
        average.sample(latency, now, tau)

    # -- receive ------------------------------------------------------------

    def _rx_member(self, sock: KCMSocket) -> _Member[KCMSocket] | None:
        member = self._rx_members.get(sock.index)
        return member if member is not None and member.obj is sock else None

    def socket_added(self, sock: KCMSocket, /) -> None:
        member = self._rx_member(sock)
        if member is None:
            old = self._rx_members.get(sock.index)
            if old is not None:  # its index was freed: that socket closed
                self._rx.discard(old)
            member = _Member(sock, self._new_estimate(self._rx_average, self._clock()))
            self._rx_members[sock.index] = member
        self._rx.add(member)

    def socket_removed(self, sock: KCMSocket, /) -> None:
        member = self._rx_member(sock)
        if member is None:
            return
        self._rx.discard(member)
        if not is_full(sock):
            # Disabled or closed: its queue is about to move away, and those
            # messages were not received here.  The estimate stays for a
            # re-enabled socket.
            member.outstanding.clear()
            member.head_done = 0

    def pick_socket(self, stream: AttachedStream | None, message: bytes, /) -> KCMSocket | None:
        now = self._clock()
        member = self._choose(self._rx, now)
        if member is None:
            return None
        member.outstanding.append((now, len(message)))
        return member.obj

    def socket_drained(self, sock: KCMSocket, nbytes: int, /) -> None:
        member = self._rx_member(sock)
        if member is None:
            return
        outstanding = member.outstanding
        if not sock.receive_enabled:
            # A full socket was disabled: its queue moved away.
            outstanding.clear()
            member.head_done = 0
            return
        oldest: float | None = None
        left = nbytes + member.head_done
        while outstanding and left > 0:
            picked_at, size = outstanding[0]
            if size > left:
                break
            left -= size
            outstanding.popleft()
            if oldest is None:
                oldest = picked_at
        member.head_done = left if outstanding else 0
        if oldest is not None:
            # Messages leave in order, so the first one out waited longest;
            # the others of one drain could only lower a peak estimate, at
            # no time apart (weight zero).
            now = self._clock()
            self._observe(member, now - oldest, now, rx=True)

    # -- transmit -----------------------------------------------------------

    def _tx_member(self, stream: AttachedStream) -> _Member[AttachedStream] | None:
        member = self._tx_members.get(stream.index)
        return member if member is not None and member.obj is stream else None

    def stream_added(self, stream: AttachedStream, /) -> None:
        old = self._tx_members.get(stream.index)
        if old is not None:  # pragma: no cover - stream_removed comes first
            self._tx.discard(old)
        member = _Member(stream, self._new_estimate(self._tx_average, self._clock()))
        self._tx_members[stream.index] = member
        self._tx.add(member)

    def stream_removed(self, stream: AttachedStream, /) -> None:
        member = self._tx_member(stream)
        if member is not None:
            self._tx.discard(member)
            del self._tx_members[stream.index]  # a stream never comes back

    def pick_stream(
        self, sock: KCMSocket, messages: Sequence[bytes], nbytes: int, /
    ) -> AttachedStream | None:
        now = self._clock()
        member = self._choose(self._tx, now)
        if member is None:
            return None
        member.outstanding.append((now, nbytes))
        return member.obj

    def written(
        self, stream: AttachedStream, sock: KCMSocket, nbytes: int, seconds: float, /
    ) -> None:
        member = self._tx_member(stream)
        if member is None:
            return
        if member.outstanding:
            member.outstanding.popleft()  # a stream writes its groups in order
        self._observe(member, seconds, self._clock(), rx=False)

    def withdrawn(self, stream: AttachedStream, sock: KCMSocket, nbytes: int, /) -> None:
        # One group fewer outstanding, and no latency sample.  Which entry
        # goes does not matter for the count; the newest keeps the age of
        # the oldest, the one being written, as it is.
        member = self._tx_member(stream)
        if member is not None and member.outstanding:
            member.outstanding.pop()
