"""The built-in policies alone: round-robin, batch-affinity and least-queued.

Each test drives a policy exactly as the mux does, with the stand-ins and
drivers of ``tests/policy_drivers.py``: sockets and streams that carry only
what a policy may read (``rx_queued_bytes``, ``tx_queued_bytes``), candidate
sets kept exact, and the loads updated after each pick, drain and write, as
the protocol in ``trio_kcm._policy`` promises.  No mux runs here: the same
policies in a real mux are ``tests/test_policy_in_mux.py``.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_kcm.policies import BatchAffinity, LeastQueued, RoundRobin

from .policy_drivers import FakeSock, FakeStream, RxDriver, TxDriver, socks, streams

# ---------------------------------------------------------------------------
# round-robin


def test_round_robin_receive_visits_sockets_in_turn_per_message() -> None:
    rx = RxDriver(RoundRobin())
    a, b, c = socks(3)
    rx.add(a, b, c)
    # Per message, not per read: a read of 7 messages is spread too.
    assert rx.read(None, 7) == [a, b, c, a, b, c, a]
    stream = FakeStream("t")
    assert rx.read(stream, 5) == [b, c, a, b, c]
    assert (a.rx_queued_bytes, b.rx_queued_bytes, c.rx_queued_bytes) == (4, 4, 4)


def test_round_robin_removed_sockets_are_never_picked() -> None:
    rx = RxDriver(RoundRobin())
    a, b, c, d = socks(4)
    rx.add(a, b, c, d)
    assert rx.read(None, 2) == [a, b]
    rx.remove(c)
    assert rx.read(None, 6) == [d, a, b, d, a, b]
    rx.remove(a)
    rx.remove(d)
    assert rx.read(None, 3) == [b, b, b]
    rx.remove(b)
    assert rx.pick(None) is None
    # Back (it has room again): it rejoins the round, at the end of the line.
    rx.add(c)
    rx.add(a)
    assert rx.read(None, 4) == [c, a, c, a]


def test_round_robin_nothing_to_pick() -> None:
    policy = RoundRobin()
    assert policy.pick_socket(None, b"m") is None
    assert policy.pick_stream(FakeSock("s"), [b"m"], 1) is None  # type: ignore[arg-type]


def test_round_robin_transmit_visits_streams_in_turn_per_group() -> None:
    tx = TxDriver(RoundRobin())
    x, y = socks(2)
    t0, t1, t2 = streams(3)
    tx.add(t0, t1, t2)
    picks = [
        tx.pick(x, [b"a"]),
        tx.pick(y, [b"b", b"c", b"d"]),  # a batch is one group: one pick
        tx.pick(x, [b"e" * 100]),
        tx.pick(x, [b"f"]),
        tx.pick(y, [b"g"]),
    ]
    assert picks == [t0, t1, t2, t0, t1]
    # Writes and releases do not change the order.
    tx.write_all(t0)
    tx.write_all(t1)
    assert tx.pick(x) is t2
    assert tx.pick(x) is t0
    tx.remove(t1)
    assert [tx.pick(y) for _ in range(4)] == [t2, t0, t2, t0]
    tx.remove(t0)
    tx.remove(t2)
    assert tx.pick(x) is None
    t3 = FakeStream("t3")
    tx.add(t3)
    assert tx.pick(x) is t3


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
    pool = socks(6)
    rx = RxDriver(RoundRobin())
    for kind, arg in ops:
        if kind == "add":
            if pool[arg] not in rx.candidates:
                rx.add(pool[arg])
        elif kind == "remove":
            if pool[arg] in rx.candidates:
                rx.remove(pool[arg])
        else:
            picks = rx.read(None, arg)
            k = len(rx.candidates)
            if not k:
                assert picks == [None] * arg
                continue
            for i in range(arg):
                window = picks[i : i + k]
                assert len(set(window)) == len(window)
                if i + k < arg:
                    assert picks[i] is picks[i + k]


# ---------------------------------------------------------------------------
# batch-affinity: receive


def test_batch_affinity_one_read_one_socket_next_read_next_socket() -> None:
    rx = RxDriver(BatchAffinity())
    a, b, c = socks(3)
    rx.add(a, b, c)
    s1, s2 = streams(2)
    assert rx.read(s1, 5) == [a] * 5
    assert rx.read(s1, 3) == [b] * 3
    assert rx.read(s2, 4) == [c] * 4  # the line is shared by all streams
    assert rx.read(s1, 1) == [a]
    assert rx.read(s2, 2) == [b, b]


def test_batch_affinity_binding_is_per_stream_until_read_done() -> None:
    policy = BatchAffinity()
    rx = RxDriver(policy)
    a, b, c = socks(3)
    rx.add(a, b, c)
    s1, s2 = streams(2)
    # Two reads open at once (the policy allows it, though the mux steers one
    # read at a time): each keeps its own socket.
    assert rx.pick(s1) is a
    assert rx.pick(s2) is b
    assert [rx.pick(s1), rx.pick(s2), rx.pick(s1)] == [a, b, a]
    policy.read_done(s1)
    assert rx.pick(s1) is c
    assert rx.pick(s2) is b
    policy.read_done(s2)
    policy.read_done(s1)
    assert rx.read(s2, 2) == [a, a]


def test_batch_affinity_bound_socket_removed_mid_batch() -> None:
    rx = RxDriver(BatchAffinity())
    a, b, c = socks(3)
    rx.add(a, b, c)
    s1 = FakeStream("t")
    picked = [rx.pick(s1) for _ in range(3)]
    assert picked == [a, a, a]
    rx.remove(a)  # a is full
    rest = [rx.pick(s1) for _ in range(4)]
    assert rest == [b] * 4  # the rest of the batch stays together, on another socket
    rx.policy.read_done(s1)
    assert rx.read(s1, 2) == [c, c]  # and the line moves on
    assert rx.read(s1, 2) == [b, b]
    rx.add(a)  # room again: back at the end of the line
    assert rx.read(s1, 1) == [c]
    assert rx.read(s1, 1) == [b]
    assert rx.read(s1, 1) == [a]


def test_batch_affinity_bound_socket_removed_and_none_left() -> None:
    rx = RxDriver(BatchAffinity())
    (a,) = socks(1)
    rx.add(a)
    s1 = FakeStream("t")
    assert rx.pick(s1) is a
    rx.remove(a)
    assert rx.pick(s1) is None
    rx.policy.read_done(s1)
    assert rx.pick(s1) is None
    rx.add(a)
    assert rx.read(s1, 2) == [a, a]


def test_batch_affinity_moved_messages_fill_the_head_of_the_line() -> None:
    rx = RxDriver(BatchAffinity())
    a, b, c = socks(3)
    rx.add(a, b, c)
    s1 = FakeStream("t")
    assert rx.read(s1, 1) == [a]  # line: b, c, a
    # Messages moving between sockets (stream=None): the head takes them all,
    # and the line does not turn.
    assert rx.read(None, 4) == [b] * 4
    assert rx.read(None, 2) == [b] * 2
    rx.remove(b)  # the head filled up: the next one in line
    assert rx.read(None, 3) == [c] * 3
    rx.add(b)
    # A real read goes to the head of the line, which then turns.
    assert rx.read(s1, 2) == [c, c]
    assert rx.read(s1, 1) == [a]
    assert rx.read(s1, 1) == [b]


def test_batch_affinity_stream_removed_forgets_its_binding() -> None:
    policy = BatchAffinity()
    rx = RxDriver(policy)
    a, b = socks(2)
    rx.add(a, b)
    s1 = FakeStream("t")
    assert rx.pick(s1) is a
    policy.stream_removed(s1)
    assert rx.pick(s1) is b  # a new read pass, not the old binding


def test_batch_affinity_no_candidates() -> None:
    policy = BatchAffinity()
    assert policy.pick_socket(None, b"m") is None
    assert policy.pick_socket(FakeStream("t"), b"m") is None  # type: ignore[arg-type]
    assert policy.pick_stream(FakeSock("s"), [b"m"], 1) is None  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# batch-affinity: transmit


def test_batch_affinity_socket_keeps_its_stream_until_released() -> None:
    tx = TxDriver(BatchAffinity())
    x, y = socks(2)
    t0, t1, t2 = streams(3)
    tx.add(t0, t1, t2)
    assert [tx.pick(x) for _ in range(4)] == [t0] * 4
    assert tx.pick(y, [b"a", b"b"]) is t1
    # Part of x's burst is written: x still has groups on t0, still reserved.
    tx.write(t0)
    tx.write(t0)
    assert tx.pick(x) is t0
    tx.write_all(t0)  # released(t0, x)
    # x's next burst takes the stream picked longest ago: t2 (never picked).
    assert [tx.pick(x) for _ in range(3)] == [t2] * 3
    tx.write_all(t2)
    assert tx.pick(x) is t0  # t0 was picked before t1 and t2
    tx.write_all(t0)
    tx.write_all(t1)  # y released too
    assert tx.pick(y) is t1
    assert tx.pick(x) is t2


def test_batch_affinity_release_of_another_stream_keeps_the_reservation() -> None:
    policy = BatchAffinity()
    tx = TxDriver(policy)
    x = FakeSock("x")
    t0, t1 = streams(2)
    tx.add(t0, t1)
    assert tx.pick(x) is t0
    policy.released(t1, x)  # not the stream it reserved: nothing changes
    assert tx.pick(x) is t0


def test_batch_affinity_streams_are_shared_not_exclusive() -> None:
    tx = TxDriver(BatchAffinity())
    x, y, z, w = socks(4)
    (t0,) = streams(1)
    tx.add(t0)
    # One stream, three bursts in progress on it at once.
    assert [tx.pick(x), tx.pick(y), tx.pick(z), tx.pick(x)] == [t0] * 4
    # A stream that comes later takes the new bursts while it carries fewer
    # of them than the old one; the old reservations hold.
    t1 = FakeStream("t1")
    tx.add(t1)
    v, u = FakeSock("v"), FakeSock("u")
    assert [tx.pick(w), tx.pick(v)] == [t1, t1]
    assert [tx.pick(x), tx.pick(y), tx.pick(z)] == [t0] * 3
    # Three bursts on t0, two on t1: the next one shares t1.
    assert tx.pick(u) is t1
    # Two streams, four senders: a reserved stream is still given to others.
    tx = TxDriver(BatchAffinity())
    t0, t1 = streams(2)
    tx.add(t0, t1)
    assert [tx.pick(x), tx.pick(y), tx.pick(z), tx.pick(w)] == [t0, t1, t0, t1]
    assert [tx.pick(w), tx.pick(z), tx.pick(y), tx.pick(x)] == [t1, t0, t1, t0]


def test_batch_affinity_a_stream_that_never_finishes_does_not_draw_every_socket() -> None:
    # A slow stream: no burst on it is ever written, so a socket that lands
    # there stays.  It carries its share of the sockets, not more (with a
    # rotation by pick time, every socket in turn would land on it for good).
    tx = TxDriver(BatchAffinity())
    senders = socks(6)
    slow, *fast = streams(3)
    tx.add(slow, *fast)
    for _ in range(50):
        picks = [tx.pick(sock) for sock in senders]
        for stream in fast:
            tx.write_all(stream)
    assert 1 <= picks.count(slow) <= 2, picks


def test_batch_affinity_reserved_stream_removed_mid_burst() -> None:
    tx = TxDriver(BatchAffinity())
    x = FakeSock("x")
    t0, t1 = streams(2)
    tx.add(t0, t1)
    assert tx.pick(x) is t0
    tx.remove(t0)  # failed: the rest of the burst (and what was queued) goes elsewhere
    assert [tx.pick(x) for _ in range(3)] == [t1] * 3
    tx.remove(t1)
    assert tx.pick(x) is None
    t2 = FakeStream("t2")
    tx.add(t2)
    assert tx.pick(x) is t2


# ---------------------------------------------------------------------------
# least-queued


def test_least_queued_receive_picks_the_emptiest_socket() -> None:
    rx = RxDriver(LeastQueued())
    a, b, c = socks(3)
    rx.add(a, b, c)
    assert rx.pick(None, b"x" * 10) is a
    assert rx.pick(None, b"x" * 3) is b
    assert rx.pick(None, b"x" * 5) is c
    assert rx.pick(None, b"x" * 1) is b  # 3 < 5 < 10
    assert rx.pick(None, b"x" * 1) is b  # 4 < 5
    assert rx.pick(None, b"x" * 1) is c  # b and c at 5: c has waited longer
    rx.drain(a, 10)
    assert rx.pick(None, b"x" * 2) is a
    rx.remove(a)
    assert rx.pick(None, b"x") is b


def test_least_queued_readded_socket_keeps_its_load() -> None:
    rx = RxDriver(LeastQueued())
    a, b = socks(2)
    rx.add(a, b)
    assert rx.pick(None, b"x" * 50) is a
    rx.remove(a)  # full, say
    rx.drain(a, 20)  # received while not a candidate
    rx.add(a)  # room again, 30 still queued
    assert [rx.pick(None, b"x" * 10) for _ in range(3)] == [b, b, b]
    # Level at 30: a changed (came back) before b was last picked, so a.
    assert rx.pick(None, b"x" * 10) is a
    assert rx.pick(None, b"x" * 10) is b


def test_least_queued_removed_and_readded_socket_counts_once() -> None:
    # Back at the same load: its old entry and its new one must not both count.
    rx = RxDriver(LeastQueued())
    a, b = socks(2)
    rx.add(a)
    rx.remove(a)
    rx.add(a)
    rx.add(b)
    assert rx.pick(None, b"x") is a
    assert rx.pick(None, b"x") is b
    assert rx.pick(None, b"x") is a


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8])
def test_least_queued_ties_go_in_turn(k: int) -> None:
    # Equal messages, nothing drained: each once before any twice, twice
    # before any three times...
    rx = RxDriver(LeastQueued())
    pool = socks(k)
    rx.add(*pool)
    picks = rx.read(None, 4 * k)
    for r in range(4):
        assert set(picks[r * k : (r + 1) * k]) == set(pool)
    # Every message received at once (a fast worker per socket): all loads
    # stay 0, and the ties still go round instead of to the first socket.
    rx = RxDriver(LeastQueued())
    pool = socks(k)
    rx.add(*pool)
    picks = []
    for _ in range(3 * k):
        sock = rx.pick(None, b"x" * 7)
        assert sock is not None
        rx.drain(sock, 7)
        picks.append(sock)
    assert picks == pool * 3


@pytest.mark.parametrize("k", [1, 2, 4])
def test_least_queued_transmit_ties_go_in_turn(k: int) -> None:
    tx = TxDriver(LeastQueued())
    pool = streams(k)
    tx.add(*pool)
    x = FakeSock("x")
    picks = []
    for _ in range(3 * k):
        stream = tx.pick(x, [b"abc"])
        assert stream is not None
        tx.write(stream)  # written at once: back to 0
        picks.append(stream)
    assert picks == pool * 3


def test_least_queued_transmit_picks_the_least_loaded_stream() -> None:
    tx = TxDriver(LeastQueued())
    x, y = socks(2)
    t0, t1, t2 = streams(3)
    tx.add(t0, t1, t2)
    assert tx.pick(x, [b"x" * 100]) is t0
    assert tx.pick(y, [b"x" * 10, b"x" * 10]) is t1
    assert tx.pick(x, [b"x" * 30]) is t2
    assert tx.pick(x, [b"x" * 5]) is t1  # 20 < 30 < 100
    tx.write(t0)
    assert tx.pick(y, [b"x"]) is t0
    tx.remove(t0)
    assert tx.pick(y, [b"x"]) is t1  # 25 < 30
    tx.remove(t1)
    tx.remove(t2)
    assert tx.pick(y, [b"x"]) is None


def test_least_queued_no_candidates() -> None:
    policy = LeastQueued()
    assert policy.pick_socket(None, b"m") is None
    assert policy.pick_stream(FakeSock("s"), [b"m"], 1) is None  # type: ignore[arg-type]


_rx_ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 7), st.just(0)),
        st.tuples(st.just("remove"), st.integers(0, 7), st.just(0)),
        st.tuples(st.just("pick"), st.integers(1, 40), st.just(0)),
        st.tuples(st.just("drain"), st.integers(0, 7), st.integers(1, 60)),
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(_rx_ops)
def test_least_queued_receive_property_always_a_minimum(ops: list[Any]) -> None:
    pool = socks(8)
    rx = RxDriver(LeastQueued())
    for kind, i, n in ops:
        if kind == "add":
            if pool[i] not in rx.candidates:
                rx.add(pool[i])  # new, or back with whatever it still has queued
        elif kind == "remove":
            if pool[i] in rx.candidates:
                rx.remove(pool[i])
        elif kind == "drain":
            # Candidate or not: the mux reports every drain (receive, or moved away).
            if pool[i].rx_queued_bytes:
                rx.drain(pool[i], min(n, pool[i].rx_queued_bytes))
        else:
            loads = {s: s.rx_queued_bytes for s in rx.candidates}
            sock = rx.pick(None, b"x" * i)
            if loads:
                assert sock is not None
                assert loads[sock] == min(loads.values()), (sock, loads)


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
    senders = socks(3)
    tx = TxDriver(LeastQueued())
    made = 0
    for kind, i, n in ops:
        live = list(tx.candidates)
        if kind == "add":
            tx.add(FakeStream(f"t{made}"))  # a stream is never re-added: a new handle
            made += 1
        elif kind == "remove":
            if live:
                tx.remove(live[i % len(live)])
        elif kind == "write":
            busy = [t for t in live if tx.queued[t]]
            if busy:
                tx.write(busy[i % len(busy)])
        else:
            loads = {t: t.tx_queued_bytes for t in live}
            stream = tx.pick(senders[i], [b"x" * n])
            if loads:
                assert stream is not None
                assert loads[stream] == min(loads.values()), (stream, loads)


def test_least_queued_heaps_do_not_grow_without_bound() -> None:
    """100k random picks, drains, removals and writes on one policy object:
    every pick is minimal, and the heaps stay small."""
    rng = random.Random(1)
    pool = socks(8)
    policy = LeastQueued()
    rx = RxDriver(policy)
    rx.add(*pool)
    tpool = streams(4)
    tx = TxDriver(policy)
    tx.add(*tpool)
    sender = FakeSock("sender")
    biggest = 0
    for _ in range(100_000):
        r = rng.random()
        if r < 0.35:
            loads = {s: s.rx_queued_bytes for s in rx.candidates}
            sock = rx.pick(None, b"x" * rng.randint(1, 100))
            if loads:
                assert sock is not None
                assert loads[sock] == min(loads.values())
        elif r < 0.7:
            sock = rng.choice(pool)
            if sock.rx_queued_bytes:
                rx.drain(sock, rng.randint(1, sock.rx_queued_bytes))
        elif r < 0.75:
            sock = rng.choice(pool)
            if sock in rx.candidates:
                rx.remove(sock)
            else:
                rx.add(sock)
        elif r < 0.88:
            tloads = {t: t.tx_queued_bytes for t in tpool}
            stream = tx.pick(sender, [b"y" * rng.randint(1, 100)])
            assert stream is not None
            assert tloads[stream] == min(tloads.values())
        else:
            stream = rng.choice(tpool)
            if tx.queued[stream]:
                tx.write(stream)
        biggest = max(biggest, len(policy._rx._heap), len(policy._tx._heap))
    # Stale entries are dropped: the heaps stay within a small multiple of
    # the candidates (8 sockets, 4 streams), not the 100k operations.
    assert biggest <= 4 * len(pool) + 64


def test_least_queued_heap_bounded_when_one_socket_churns() -> None:
    # One candidate whose load changes on every step: each change pushes an
    # entry; they must not pile up.
    policy = LeastQueued()
    rx = RxDriver(policy)
    (a,) = socks(1)
    rx.add(a)
    for _ in range(100_000):
        rx.pick(None, b"xx")
        rx.drain(a, 1)
    assert a.rx_queued_bytes == 100_000
    assert len(policy._rx._heap) <= 4 + 64
