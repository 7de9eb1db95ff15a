"""The built-in policies alone: round-robin, batch-affinity and least-queued.

Each test drives a policy through :class:`trio_kcm.testing.PolicyHarness`: the
mux's own transmit and receive schedulers, real sockets and streams, no tasks
and no I/O.  So the candidate sets, the loads a policy reads
(``rx_queued_bytes``, ``tx_queued_bytes``) and the order of the events are the
mux's own, and so is what happens around the picks: a full socket is a
candidate again once it is down to half its buffer, a disabled or closed
socket's queue is picked for again, a failed stream's groups are picked for
again on the streams left, a read stops at the first message no socket takes.
A few tests call a policy method directly, on the harness's real objects, for
a state the mux never makes (two reads open at once, say).  The same policies
in a real mux, with its tasks, are ``tests/test_policy_in_mux.py``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_kcm import AttachedStream, KCMSocket, Policy
from trio_kcm.policies import BatchAffinity, LeastQueued, RoundRobin
from trio_kcm.testing import PolicyHarness

X = b"x"


def msgs(count: int) -> list[bytes]:
    """``count`` one-byte messages."""
    return [X] * count


# ---------------------------------------------------------------------------
# every policy


@pytest.mark.parametrize("make", [RoundRobin, BatchAffinity, LeastQueued])
def test_nothing_to_pick(make: type[Policy]) -> None:
    # The mux never asks a policy that has no candidate (a group waits in its
    # socket, a message on its stream), but the answer would be None.
    policy = make()
    tx_only = PolicyHarness(rx_policy="round-robin", tx_policy=policy)
    sock = tx_only.socket()
    assert tx_only.send(sock) is None
    assert sock.statistics().tx_waiting
    assert policy.pick_stream(sock, [b"m"], 1) is None
    rx_only = PolicyHarness(rx_policy=policy, tx_policy="round-robin")
    stream = rx_only.attach()
    assert rx_only.read(stream, [b"m"]) == []
    assert stream.statistics().rx_ready_msgs == 1
    assert policy.pick_socket(None, b"m") is None
    assert policy.pick_socket(stream, b"m") is None


# ---------------------------------------------------------------------------
# round-robin


def test_round_robin_receive_visits_sockets_in_turn_per_message() -> None:
    h = PolicyHarness(RoundRobin())
    a, b, c = h.sockets(3)
    # Per message, not per read: a read of 7 messages is spread too.
    assert h.read(None, msgs(7)) == [a, b, c, a, b, c, a]
    stream = h.attach()
    assert h.read(stream, msgs(5)) == [b, c, a, b, c]
    assert (a.rx_queued_bytes, b.rx_queued_bytes, c.rx_queued_bytes) == (4, 4, 4)


def test_round_robin_removed_sockets_are_never_picked() -> None:
    h = PolicyHarness(RoundRobin())
    a, b, c, d = h.sockets(4)
    assert h.read(None, msgs(2)) == [a, b]
    h.disable_receive(c)  # nothing queued: nothing moves
    assert h.read(None, msgs(6)) == [d, a, b, d, a, b]
    # A disabled socket's queue moves, in turn too, and only to candidates.
    h.disable_receive(a)  # its 3 messages: to d, b, d
    assert (a.rx_queued_bytes, b.rx_queued_bytes, d.rx_queued_bytes) == (0, 4, 4)
    h.disable_receive(d)  # its 4: all to b
    assert h.read(None, msgs(3)) == [b, b, b]
    assert b.rx_queued_bytes == 11
    h.disable_receive(b)
    # No candidate: the mux asks nothing, and the messages wait in it ...
    assert h.read(None, msgs(1)) == []
    assert len(h.held) == 12
    # ... for the first socket that is back (it has room again): it rejoins
    # the round, at the end of the line.
    h.enable_receive(c)
    assert h.held == []
    assert c.rx_queued_bytes == 12
    h.enable_receive(a)
    assert h.read(None, msgs(4)) == [c, a, c, a]


def test_round_robin_transmit_visits_streams_in_turn_per_group() -> None:
    h = PolicyHarness(RoundRobin())
    x, y = h.sockets(2)
    t0, t1, t2 = h.attach_many(3)
    picks = [
        h.send(x, [b"a"]),
        h.send(y, [b"b", b"c", b"d"]),  # a batch is one group: one pick
        h.send(x, [b"e" * 100]),
        h.send(x, [b"f"]),
        h.send(y, [b"g"]),
    ]
    assert picks == [t0, t1, t2, t0, t1]
    # Writes and releases do not change the order.
    h.write_all(t0)
    h.write_all(t1)
    assert h.send(x) is t2
    assert h.send(x) is t0
    h.fail(t1)  # nothing queued on it
    assert [h.send(y) for _ in range(4)] == [t2, t0, t2, t0]
    # A failed stream's groups are picked for again, on the streams left.
    h.fail(t0)
    assert len(h.queued(t2)) == 7
    h.fail(t2)
    # No stream left: the groups wait in their sockets, for the next stream.
    assert h.send(x) is None
    t3 = h.attach()
    assert len(h.queued(t3)) == 8
    assert h.send(x) is t3


_membership_ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 5)),
        st.tuples(st.just("remove"), st.integers(0, 5)),
        st.tuples(st.just("pick"), st.integers(1, 12)),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(_membership_ops)
def test_round_robin_property_in_turn_between_membership_changes(ops: list[Any]) -> None:
    """Between changes of the candidate set, k consecutive picks are k distinct
    candidates and the cycle repeats; no candidate waits more than one round."""
    h = PolicyHarness(RoundRobin())
    pool = h.sockets(6)
    for sock in pool:
        h.disable_receive(sock)  # no candidate to begin with
    for kind, arg in ops:
        if kind == "add":
            h.enable_receive(pool[arg])
        elif kind == "remove":
            h.disable_receive(pool[arg])  # its queue moves to the others
        else:
            k = len(h.receive_candidates)
            picks = h.read(None, msgs(arg))
            if not k:
                assert picks == []  # they wait in the mux for a socket
                continue
            assert len(picks) == arg
            assert set(picks) <= set(h.receive_candidates)
            for i in range(arg):
                window = picks[i : i + k]
                assert len(set(window)) == len(window)
                if i + k < arg:
                    assert picks[i] is picks[i + k]


# ---------------------------------------------------------------------------
# batch-affinity: receive


def test_batch_affinity_one_read_one_socket_next_read_next_socket() -> None:
    h = PolicyHarness(BatchAffinity())
    a, b, c = h.sockets(3)
    s1, s2 = h.attach_many(2)
    assert h.read(s1, msgs(5)) == [a] * 5
    assert h.read(s1, msgs(3)) == [b] * 3
    assert h.read(s2, msgs(4)) == [c] * 4  # the line is shared by all streams
    assert h.read(s1, msgs(1)) == [a]
    assert h.read(s2, msgs(2)) == [b, b]


def test_batch_affinity_binding_is_per_stream_until_read_done() -> None:
    policy = BatchAffinity()
    h = PolicyHarness(policy)
    a, b, c = h.sockets(3)
    s1, s2 = h.attach_many(2)
    # Two reads open at once: the policy allows it, though the mux steers one
    # read at a time, so the policy is called directly.  Each keeps its socket.
    assert policy.pick_socket(s1, X) is a
    assert policy.pick_socket(s2, X) is b
    assert [policy.pick_socket(s, X) for s in (s1, s2, s1)] == [a, b, a]
    policy.read_done(s1)
    assert policy.pick_socket(s1, X) is c
    assert policy.pick_socket(s2, X) is b
    policy.read_done(s2)
    policy.read_done(s1)
    assert h.read(s2, msgs(2)) == [a, a]


def test_batch_affinity_bound_socket_removed_mid_batch() -> None:
    h = PolicyHarness(BatchAffinity())
    a = h.socket(receive_buffer_size=3)
    b, c = h.sockets(2)
    s1 = h.attach()
    # a is full after 3 messages: the rest of the read stays together, on
    # another socket (the mux asks once per run).
    assert h.read(s1, msgs(7)) == [a] * 3 + [b] * 4
    assert a not in h.receive_candidates
    assert h.read(s1, msgs(2)) == [c, c]  # and the line moves on
    assert h.read(s1, msgs(2)) == [b, b]
    # Room again once it is down to half its buffer, not at the first free
    # byte; then it is back at the end of the line.
    h.receive(a)
    assert a not in h.receive_candidates
    h.receive(a)
    assert a in h.receive_candidates
    assert h.read(s1, msgs(1)) == [c]
    assert h.read(s1, msgs(1)) == [b]
    assert h.read(s1, msgs(1)) == [a]


def test_batch_affinity_bound_socket_removed_and_none_left() -> None:
    policy = BatchAffinity()
    h = PolicyHarness(policy)
    a = h.socket(receive_buffer_size=2)
    s1 = h.attach()
    # a fills up mid-read and no socket is left: the mux asks no more, and the
    # rest of the read waits on the stream; so does the next read.
    assert h.read(s1, [b"1", b"2", b"3"]) == [a, a]
    assert h.read(s1, [b"4"]) == []
    assert policy.pick_socket(s1, X) is None  # (which is what the policy would say)
    h.receive(a, 2)
    # Room again: the messages that waited go first.
    assert h.read(s1, []) == [a, a]
    assert h.receive(a, 2) == [b"3", b"4"]


def test_batch_affinity_moved_messages_fill_the_head_of_the_line() -> None:
    h = PolicyHarness(BatchAffinity())
    a = h.socket()
    b = h.socket(receive_buffer_size=6)
    c = h.socket()
    s1 = h.attach()
    assert h.read(s1, msgs(1)) == [a]  # line: b, c, a
    # Messages moving between sockets (stream=None): the head takes them all,
    # and the line does not turn.
    assert h.read(None, msgs(4)) == [b] * 4
    assert h.read(None, msgs(2)) == [b] * 2
    assert b not in h.receive_candidates  # the head filled up: the next one in line
    assert h.read(None, msgs(3)) == [c] * 3
    h.receive(b, 3)  # room again (half its buffer): at the end of the line
    # A real read goes to the head of the line, which then turns.
    assert h.read(s1, msgs(2)) == [c, c]
    assert h.read(s1, msgs(1)) == [a]
    assert h.read(s1, msgs(1)) == [b]


def test_batch_affinity_stream_removed_forgets_its_binding() -> None:
    policy = BatchAffinity()
    h = PolicyHarness(policy)
    a, b = h.sockets(2)
    s1 = h.attach()
    # Mid-read (called directly: in the mux every read ends with read_done),
    # the stream fails.
    assert policy.pick_socket(s1, X) is a
    h.fail(s1)
    assert policy.pick_socket(s1, X) is b  # a new read pass, not the old binding


# ---------------------------------------------------------------------------
# batch-affinity: transmit


def test_batch_affinity_socket_keeps_its_stream_until_released() -> None:
    h = PolicyHarness(BatchAffinity())
    x, y = h.sockets(2)
    t0, t1, t2 = h.attach_many(3)
    assert [h.send(x) for _ in range(4)] == [t0] * 4
    assert h.send(y, [b"a", b"b"]) is t1
    # Part of x's burst is written: x still has groups on t0, still reserved.
    h.write(t0)
    h.write(t0)
    assert h.send(x) is t0
    h.write_all(t0)  # released(t0, x)
    # x's next burst takes the stream picked longest ago: t2 (never picked).
    assert [h.send(x) for _ in range(3)] == [t2] * 3
    h.write_all(t2)
    assert h.send(x) is t0  # t0 was picked before t1 and t2
    h.write_all(t0)
    h.write_all(t1)  # y released too
    assert h.send(y) is t1
    assert h.send(x) is t2


def test_batch_affinity_release_of_another_stream_keeps_the_reservation() -> None:
    policy = BatchAffinity()
    h = PolicyHarness(policy)
    x = h.socket()
    t0, t1 = h.attach_many(2)
    assert h.send(x) is t0
    # The mux says released(t1, x) only once x had groups on t1, which this
    # policy never gives it while t0 is reserved: called directly.
    policy.released(t1, x)  # not the stream it reserved: nothing changes
    assert h.send(x) is t0


def test_batch_affinity_streams_are_shared_not_exclusive() -> None:
    h = PolicyHarness(BatchAffinity())
    x, y, z, w = h.sockets(4)
    t0 = h.attach()
    # One stream, three bursts in progress on it at once.
    assert [h.send(s) for s in (x, y, z, x)] == [t0] * 4
    # A stream that comes later takes the new bursts while it carries fewer
    # of them than the old one; the old reservations hold.
    t1 = h.attach()
    v, u = h.sockets(2)
    assert [h.send(w), h.send(v)] == [t1, t1]
    assert [h.send(s) for s in (x, y, z)] == [t0] * 3
    # Three bursts on t0, two on t1: the next one shares t1.
    assert h.send(u) is t1
    # Two streams, four senders: a reserved stream is still given to others.
    h = PolicyHarness(BatchAffinity())
    x, y, z, w = h.sockets(4)
    t0, t1 = h.attach_many(2)
    assert [h.send(s) for s in (x, y, z, w)] == [t0, t1, t0, t1]
    assert [h.send(s) for s in (w, z, y, x)] == [t1, t0, t1, t0]


def test_batch_affinity_a_stream_that_never_finishes_does_not_draw_every_socket() -> None:
    # A slow stream: no burst on it is ever written, so a socket that lands
    # there stays.  It carries its share of the sockets, not more (with a
    # rotation by pick time, every socket in turn would land on it for good).
    h = PolicyHarness(BatchAffinity())
    senders = h.sockets(6)
    slow, *fast = h.attach_many(3)
    for _ in range(50):
        picks = [h.send(sock) for sock in senders]
        for stream in fast:
            h.write_all(stream)
    assert 1 <= picks.count(slow) <= 2, picks


def test_batch_affinity_reserved_stream_removed_mid_burst() -> None:
    h = PolicyHarness(BatchAffinity())
    x = h.socket()
    t0, t1 = h.attach_many(2)
    assert h.send(x, [b"1"]) is t0
    # t0 fails: the rest of the burst goes elsewhere, and so does the group
    # that was queued on it (picked for again).
    h.fail(t0)
    assert h.queued(t1) == [[b"1"]]
    assert [h.send(x) for _ in range(3)] == [t1] * 3
    h.fail(t1)
    # No stream: x's groups wait in it, in order, until one is attached.
    assert h.send(x, [b"5"]) is None
    t2 = h.attach()
    assert h.queued(t2) == [[b"1"], [b"m"], [b"m"], [b"m"], [b"5"]]
    assert h.send(x) is t2


# ---------------------------------------------------------------------------
# least-queued


def test_least_queued_receive_picks_the_emptiest_socket() -> None:
    h = PolicyHarness(LeastQueued())
    a, b, c = h.sockets(3)
    assert h.read(None, [X * 10]) == [a]
    assert h.read(None, [X * 3]) == [b]
    assert h.read(None, [X * 5]) == [c]
    assert h.read(None, [X]) == [b]  # 3 < 5 < 10
    assert h.read(None, [X]) == [b]  # 4 < 5
    assert h.read(None, [X]) == [c]  # b and c at 5: c has waited longer
    h.receive(a)
    assert h.read(None, [X * 2]) == [a]
    # Disabled, a is never picked again; its queue moves to the emptiest.
    h.disable_receive(a)
    assert (b.rx_queued_bytes, c.rx_queued_bytes) == (7, 6)
    assert h.read(None, [X]) == [c]


def test_least_queued_readded_socket_keeps_its_load() -> None:
    h = PolicyHarness(LeastQueued())
    a = h.socket(receive_buffer_size=60)
    assert h.read(None, [X * 10] * 6) == [a] * 6  # full
    b = h.socket()
    h.receive(a, 2)  # received while not a candidate: 40 left, above half
    assert a not in h.receive_candidates
    h.receive(a)  # 30 left: room again, with its load
    assert a in h.receive_candidates
    assert h.read(None, [X * 10] * 3) == [b, b, b]
    # Level at 30: a changed (came back) before b was last picked, so a.
    assert h.read(None, [X * 10]) == [a]
    assert h.read(None, [X * 10]) == [b]


def test_least_queued_removed_and_readded_socket_counts_once() -> None:
    # Back at the same load: its old entry and its new one must not both count.
    h = PolicyHarness(LeastQueued())
    a = h.socket()
    h.disable_receive(a)
    h.enable_receive(a)
    b = h.socket()
    assert h.read(None, msgs(3)) == [a, b, a]


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8])
def test_least_queued_ties_go_in_turn(k: int) -> None:
    # Equal messages, nothing received: each once before any twice, twice
    # before any three times...
    h = PolicyHarness(LeastQueued())
    pool = h.sockets(k)
    picks = h.read(None, msgs(4 * k))
    for r in range(4):
        assert set(picks[r * k : (r + 1) * k]) == set(pool)
    # Every message received at once (a fast worker per socket): all loads
    # stay 0, and the ties still go round instead of to the first socket.
    h = PolicyHarness(LeastQueued())
    pool = h.sockets(k)
    picks = []
    for _ in range(3 * k):
        (sock,) = h.read(None, [X * 7])
        assert h.receive(sock) == [X * 7]
        picks.append(sock)
    assert picks == pool * 3


@pytest.mark.parametrize("k", [1, 2, 4])
def test_least_queued_transmit_ties_go_in_turn(k: int) -> None:
    h = PolicyHarness(LeastQueued())
    pool = h.attach_many(k)
    x = h.socket()
    picks = []
    for _ in range(3 * k):
        stream = h.send(x, [b"abc"])
        assert stream is not None
        h.write(stream)  # written at once: back to 0
        picks.append(stream)
    assert picks == pool * 3


def test_least_queued_transmit_picks_the_least_loaded_stream() -> None:
    h = PolicyHarness(LeastQueued())
    x, y = h.sockets(2)
    t0, t1, t2 = h.attach_many(3)
    assert h.send(x, [X * 100]) is t0
    assert h.send(y, [X * 10, X * 10]) is t1
    assert h.send(x, [X * 30]) is t2
    assert h.send(x, [X * 5]) is t1  # 20 < 30 < 100
    h.write(t0)
    assert h.send(y, [X]) is t0
    # t0 fails: its group is picked for again, on the least loaded: t1.
    h.fail(t0)
    assert h.queued(t1) == [[X * 10, X * 10], [X * 5], [X]]
    assert h.send(y, [X]) is t1  # 26 < 30
    h.fail(t1)
    h.fail(t2)
    assert h.send(y, [X]) is None


class CheckedLeastQueued(LeastQueued):
    """least-queued, checking that each pick is a least loaded candidate.

    Every pick the mux asks for is checked, those for messages moving away
    from a disabled socket and for groups moving off a failed stream too.
    """

    def __init__(self) -> None:
        super().__init__()
        self.harness: PolicyHarness | None = None  # set once it is built

    @classmethod
    def harnessed(cls) -> tuple[PolicyHarness, CheckedLeastQueued]:
        policy = cls()
        policy.harness = PolicyHarness(policy)
        return policy.harness, policy

    def pick_socket(self, stream: AttachedStream | None, message: bytes, /) -> KCMSocket | None:
        assert self.harness is not None
        loads = {s: s.rx_queued_bytes for s in self.harness.receive_candidates}
        sock = super().pick_socket(stream, message)
        assert sock is not None and loads[sock] == min(loads.values()), (sock, loads)
        return sock

    def pick_stream(
        self, sock: KCMSocket, messages: Sequence[bytes], nbytes: int, /
    ) -> AttachedStream | None:
        assert self.harness is not None
        loads = {t: t.tx_queued_bytes for t in self.harness.transmit_candidates}
        stream = super().pick_stream(sock, messages, nbytes)
        assert stream is not None and loads[stream] == min(loads.values()), (stream, loads)
        return stream


_rx_ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 7), st.just(0)),
        st.tuples(st.just("remove"), st.integers(0, 7), st.just(0)),
        st.tuples(st.just("pick"), st.integers(1, 40), st.just(0)),
        st.tuples(st.just("drain"), st.integers(0, 7), st.integers(1, 4)),
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(_rx_ops)
def test_least_queued_receive_property_always_a_minimum(ops: list[Any]) -> None:
    h, _ = CheckedLeastQueued.harnessed()
    # A small buffer: sockets fill up, and come back with what they still hold.
    pool = h.sockets(8, receive_buffer_size=100)
    for sock in pool:
        h.disable_receive(sock)  # no candidate to begin with
    for kind, i, n in ops:
        if kind == "add":
            h.enable_receive(pool[i])
        elif kind == "remove":
            h.disable_receive(pool[i])  # its queue is picked for again
        elif kind == "drain":
            h.receive(pool[i], n)  # candidate or not
        else:
            had_room = bool(h.receive_candidates)
            assert len(h.read(None, [X * i])) == had_room


_tx_ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.just(0), st.just(0)),
        st.tuples(st.just("remove"), st.integers(0, 15), st.just(0)),
        st.tuples(st.just("pick"), st.integers(0, 2), st.integers(1, 40)),
        st.tuples(st.just("write"), st.integers(0, 15), st.just(0)),
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(_tx_ops)
def test_least_queued_transmit_property_always_a_minimum(ops: list[Any]) -> None:
    h, _ = CheckedLeastQueued.harnessed()
    senders = h.sockets(3)
    for kind, i, n in ops:
        live = h.transmit_candidates
        if kind == "add":
            h.attach()  # a stream is never re-added: a new handle
        elif kind == "remove":
            if live:
                h.fail(live[i % len(live)])  # its groups are picked for again
        elif kind == "write":
            busy = [t for t in live if h.queued(t)]
            if busy:
                h.write(busy[i % len(busy)])
        else:
            assert (h.send(senders[i], [X * n]) is not None) == bool(live)


def test_least_queued_heaps_do_not_grow_without_bound() -> None:
    """100k random picks, receives, removals and writes on one policy object:
    every pick is minimal, and the heaps stay small."""
    rng = random.Random(1)
    h, policy = CheckedLeastQueued.harnessed()
    pool = h.sockets(8)
    tpool = h.attach_many(4)
    sender = h.socket(send_buffer_size=1 << 30)
    h.disable_receive(sender)  # it only sends
    biggest = 0
    for _ in range(100_000):
        r = rng.random()
        if r < 0.35:
            h.read(None, [X * rng.randint(1, 100)])
        elif r < 0.7:
            sock = rng.choice(pool)
            queued = sock.statistics().rx_queued_msgs
            if queued:
                h.receive(sock, rng.randint(1, queued))
        elif r < 0.75:
            sock = rng.choice(pool)
            if sock in h.receive_candidates:
                h.disable_receive(sock)
            else:
                h.enable_receive(sock)
        elif r < 0.88:
            assert h.send(sender, [b"y" * rng.randint(1, 100)]) is not None
        else:
            h.write(rng.choice(tpool))
        biggest = max(biggest, len(policy._rx._heap), len(policy._tx._heap))
    # Stale entries are dropped: the heaps stay within a small multiple of
    # the candidates (8 sockets, 4 streams), not the 100k operations.
    assert biggest <= 4 * len(pool) + 64


def test_least_queued_heap_bounded_when_one_socket_churns() -> None:
    # One candidate whose load changes on every step: each change pushes an
    # entry; they must not pile up.
    policy = LeastQueued()
    h = PolicyHarness(policy)
    a = h.socket()
    for _ in range(100_000):
        h.read(None, [X, X])
        h.receive(a)  # one of the two: a byte more queued at each step
    assert a.rx_queued_bytes == 100_000
    assert len(policy._rx._heap) <= 4 + 64


# batch-affinity's transmit side against a reference: the stream with the
# fewest reservations, and among those the one picked (or added) longest ago;
# with one stream it keeps no heap, and the picks must not change for that.

_tx_ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 3)),
        st.tuples(st.just("remove"), st.integers(0, 3)),
        st.tuples(st.just("pick"), st.integers(0, 3)),
        st.tuples(st.just("release"), st.integers(0, 3)),
    ),
    max_size=80,
)


class _ReferenceTx:
    """The rule written plainly: a scan for the smallest (reservations, picked)."""

    def __init__(self) -> None:
        self.keys: dict[int, tuple[int, int]] = {}
        self.reserved: dict[int, int] = {}
        self.clock = 0

    def tick(self) -> int:
        self.clock += 1
        return self.clock

    def add(self, stream: int) -> None:
        self.keys[stream] = (0, self.tick())

    def remove(self, stream: int) -> None:
        del self.keys[stream]
        self.reserved = {s: t for s, t in self.reserved.items() if t != stream}

    def pick(self, sock: int) -> int | None:
        stream = self.reserved.get(sock)
        if stream is not None and stream in self.keys:
            return stream
        if not self.keys:
            return None
        stream = min(self.keys, key=self.keys.__getitem__)
        self.reserved[sock] = stream
        self.keys[stream] = (self.keys[stream][0] + 1, self.tick())
        return stream

    def release(self, stream: int, sock: int) -> None:
        if self.reserved.get(sock) == stream:
            del self.reserved[sock]
            if stream in self.keys:
                count, picked = self.keys[stream]
                self.keys[stream] = (count - 1, picked)


@settings(max_examples=300, deadline=None)
@given(_tx_ops)
def test_batch_affinity_transmit_picks_as_the_rule_says(ops: list[tuple[str, int]]) -> None:
    policy = BatchAffinity()
    ref = _ReferenceTx()
    handles = [object() for _ in range(4)]  # a policy only hashes streams and sockets
    sockets = [object() for _ in range(4)]
    attached: set[int] = set()
    queued: dict[int, int] = {}  # sock -> stream it has a burst on
    for op, i in ops:
        if op == "add" and i not in attached:
            attached.add(i)
            policy.stream_added(handles[i])  # type: ignore[arg-type]
            ref.add(i)
        elif op == "remove" and i in attached:
            attached.discard(i)
            policy.stream_removed(handles[i])  # type: ignore[arg-type]
            ref.remove(i)
            queued = {s: t for s, t in queued.items() if t != i}
        elif op == "pick":
            got = policy.pick_stream(sockets[i], [b"m"], 1)  # type: ignore[arg-type]
            want = ref.pick(i)
            assert got is (None if want is None else handles[want])
            if want is not None:
                queued[i] = want
        elif op == "release" and i in queued:
            stream = queued.pop(i)
            policy.released(handles[stream], sockets[i])  # type: ignore[arg-type]
            ref.release(stream, i)
