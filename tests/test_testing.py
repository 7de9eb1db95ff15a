"""``trio_kcm.testing.PolicyHarness``: each step does what the mux does.

The harness is what the policy tests stand on (``tests/test_policy_units.py``
and the tests of trio-kcm-policies), so it is tested here on its own: what a
read steers and returns, sends and writes and the ``written()`` time on the
virtual clock, a failed stream's groups picked for again, a closed socket's
queue moved, a policy's exception raised from the call that caused it.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import trio

from trio_kcm import AttachedStream, KCMSocket, StreamError
from trio_kcm.policies import BatchAffinity, RoundRobin
from trio_kcm.testing import PolicyHarness


class Recording(RoundRobin):
    """round-robin, noting what the mux tells it after a pick."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[object, ...]] = []

    def written(
        self, stream: AttachedStream, sock: KCMSocket, nbytes: int, seconds: float, /
    ) -> None:
        self.events.append(("written", stream, sock, nbytes, seconds))

    def released(self, stream: AttachedStream, sock: KCMSocket, /) -> None:
        self.events.append(("released", stream, sock))

    def stream_removed(self, stream: AttachedStream, /) -> None:
        super().stream_removed(stream)
        self.events.append(("stream_removed", stream))


class Picky(RoundRobin):
    """round-robin that holds messages starting with ``b"!"``."""

    def pick_socket(self, stream: AttachedStream | None, message: bytes, /) -> KCMSocket | None:
        return None if message.startswith(b"!") else super().pick_socket(stream, message)


# ---------------------------------------------------------------------------
# receive


def test_read_returns_where_each_message_went() -> None:
    h = PolicyHarness(RoundRobin())
    a, b = h.sockets(2)
    assert (a.index, b.index) == (0, 1)
    assert a.mux is h  # type: ignore[comparison-overlap]  # (a Mux, as far as a socket knows)
    stream = h.attach()
    assert h.read(stream, [b"1", b"2", b"3"]) == [a, b, a]
    assert h.receive(a, 10) == [b"1", b"3"]
    assert h.receive(b, 10) == [b"2"]
    assert h.receive(b) == []
    # A batch-affine policy is asked once per run; each message is still listed.
    h = PolicyHarness(BatchAffinity())
    a = h.socket(receive_buffer_size=2)
    b = h.socket()
    stream = h.attach()
    assert h.read(stream, [b"1", b"2", b"3"]) == [a, a, b]
    # Messages moving between sockets get a pick each (no runs).
    assert h.read(None, [b"4", b"5"]) == [b, b]


def test_a_read_stops_at_the_first_message_no_socket_takes() -> None:
    h = PolicyHarness(Picky())
    a, b = h.sockets(2)
    stream = h.attach()
    assert h.read(stream, [b"1", b"!2", b"3"]) == [a]
    assert stream.statistics().rx_ready_msgs == 2
    # The next read starts with what waited: held again at the same place.
    assert h.read(stream, [b"4"]) == []
    assert stream.statistics().rx_ready_msgs == 3
    # Without a stream, what no socket takes waits in the mux.
    assert h.read(None, [b"5", b"!6", b"7"]) == [b]
    assert h.held == [b"!6", b"7"]


def test_no_socket_the_messages_wait_for_the_first_one() -> None:
    h = PolicyHarness(RoundRobin())
    assert h.read(None, [b"1", b"2"]) == []
    assert h.held == [b"1", b"2"]
    a = h.socket()
    assert h.held == []
    assert h.receive(a, 10) == [b"1", b"2"]


def test_a_full_socket_is_a_candidate_again_at_half_its_buffer() -> None:
    h = PolicyHarness(RoundRobin())
    a = h.socket(receive_buffer_size=4)
    assert h.read(None, [b"1", b"2", b"3", b"4"]) == [a] * 4
    assert h.receive_candidates == ()
    h.receive(a)
    assert h.receive_candidates == ()  # 3 of 4 bytes: not yet
    h.receive(a)
    assert h.receive_candidates == (a,)


def test_disable_and_close_move_the_queue() -> None:
    h = PolicyHarness(RoundRobin())
    a, b, c = h.sockets(3)
    h.read(None, [b"1", b"2", b"3", b"4"])  # a: 1, 4; b: 2; c: 3
    h.disable_receive(a)
    assert h.receive_candidates == (b, c)
    assert a.rx_queued_bytes == 0
    h.close(b)
    assert h.receive_candidates == (c,)
    assert sorted(h.receive(c, 10)) == [b"1", b"2", b"3", b"4"]
    with pytest.raises(trio.ClosedResourceError):
        b.receive_nowait()
    assert h.socket().index == 1  # the closed socket's index is free again
    h.enable_receive(a)
    assert a in h.receive_candidates


# ---------------------------------------------------------------------------
# transmit


def test_send_and_write_with_written_seconds_from_the_virtual_clock() -> None:
    policy = Recording()
    h = PolicyHarness(policy)
    x = h.socket()
    t0, t1 = h.attach_many(2)
    assert h.send(x, [b"ab", b"c"]) is t0
    assert h.send(x, [b"d"]) is t1
    assert h.queued(t0) == [[b"ab", b"c"]]
    assert t0.tx_queued_bytes == 3
    h.advance(0.5)
    assert h.write(t0, 0.25) == [b"ab", b"c"]
    assert h.now == 0.75
    # The time from the pick to the end of the write; then x has nothing left there.
    assert policy.events == [("written", t0, x, 3, 0.75), ("released", t0, x)]
    assert t0.tx_queued_bytes == 0
    assert h.write(t0, 1.0) == []  # nothing queued: the clock stays
    assert h.now == 0.75
    assert h.write_all(t1) == 1
    with pytest.raises(ValueError):
        h.advance(-1.0)


def test_send_to_is_queued_without_the_policy() -> None:
    policy = Recording()
    h = PolicyHarness(policy)
    x = h.socket()
    t0, t1 = h.attach_many(2)
    h.send_to(x, t1, b"pinned")
    assert h.queued(t1) == [[b"pinned"]]
    assert h.write_all(t1) == 1
    assert policy.events == []  # neither picked nor written, as far as it knows
    assert h.send(x) is t0  # the turn did not move


def test_fail_picks_the_groups_again_on_the_other_streams() -> None:
    policy = Recording()
    h = PolicyHarness(policy)
    x = h.socket()
    t0, t1 = h.attach_many(2)
    assert [h.send(x, [m]) for m in (b"1", b"2", b"3")] == [t0, t1, t0]
    error = h.fail(t0)
    assert isinstance(error, StreamError)
    assert error.stream is t0
    assert policy.events == [("stream_removed", t0)]
    assert h.transmit_candidates == (t1,)
    assert h.queued(t0) == []
    assert sorted(h.queued(t1)) == [[b"1"], [b"2"], [b"3"]]
    # No stream left: the groups wait in their socket for the next one.
    h.fail(t1)
    assert h.send(x, [b"4"]) is None
    t2 = h.attach()
    assert t2.index == 0  # the failed streams' indices are free again
    assert len(h.queued(t2)) == 4


def test_unattach_moves_the_groups_not_started() -> None:
    h = PolicyHarness(RoundRobin())
    x = h.socket()
    t0, t1 = h.attach_many(2)
    h.send(x, [b"1"])
    h.unattach(t0)
    assert h.transmit_candidates == (t1,)
    assert h.queued(t1) == [[b"1"]]
    assert t0.state == "unattached"


def test_close_a_socket_what_it_sent_still_goes_out() -> None:
    h = PolicyHarness(RoundRobin())
    x = h.socket()
    t0 = h.attach()
    assert h.send(x, [b"1"]) is t0
    h.close(x)
    assert h.write(t0) == [b"1"]
    with pytest.raises(trio.ClosedResourceError):
        h.send(x)


# ---------------------------------------------------------------------------
# policy bugs


class Broken(RoundRobin):
    def pick_socket(self, stream: AttachedStream | None, message: bytes, /) -> KCMSocket | None:
        raise ZeroDivisionError("pick_socket")

    def pick_stream(
        self, sock: KCMSocket, messages: Sequence[bytes], nbytes: int, /
    ) -> AttachedStream | None:
        raise ZeroDivisionError("pick_stream")


def test_a_policy_exception_propagates_out_of_the_call() -> None:
    h = PolicyHarness(Broken())
    x = h.socket()
    stream = h.attach()
    with pytest.raises(ZeroDivisionError, match="pick_socket"):
        h.read(stream, [b"m"])
    with pytest.raises(ZeroDivisionError, match="pick_stream"):
        h.send(x)


def test_a_pick_that_is_not_a_candidate_is_an_error() -> None:
    class Stale(RoundRobin):
        def __init__(self, other: KCMSocket) -> None:
            super().__init__()
            self.other = other

        def pick_socket(self, stream: AttachedStream | None, message: bytes, /) -> KCMSocket | None:
            return self.other

    stranger = PolicyHarness(RoundRobin()).socket()
    h = PolicyHarness(rx_policy=Stale(stranger), tx_policy="round-robin")
    h.socket()
    with pytest.raises(RuntimeError, match="not a receive candidate"):
        h.read(None, [b"m"])


def test_policies_by_name_and_per_side() -> None:
    h = PolicyHarness("round-robin")
    assert type(h.rx_policy) is RoundRobin
    assert h.tx_policy is h.rx_policy
    h = PolicyHarness(rx_policy="round-robin", tx_policy="batch-affinity")
    assert type(h.rx_policy) is RoundRobin and type(h.tx_policy) is BatchAffinity
