"""Load-balancing policies: the built-ins alone, the registry, and in a real mux.

The unit tests drive a policy exactly as the mux does, with stand-ins for
sockets and streams that carry only what a policy may read
(``rx_queued_bytes``, ``tx_queued_bytes``); the drivers keep the candidate sets
exact and update the loads after each pick, drain and write, as the protocol
in ``trio_kcm._policy`` promises.
"""

from __future__ import annotations

import errno
import random
import sys
import textwrap
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import trio_kcm
from trio_kcm.policies import BatchAffinity, LeastQueued, RoundRobin

from .conftest import PeerReader, frame

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

P = trio_kcm.LengthPrefixed(">I", adjust=4)
BUILTINS = {"round-robin": RoundRobin, "batch-affinity": BatchAffinity, "least-queued": LeastQueued}


# ---------------------------------------------------------------------------
# stand-ins and drivers


class FakeSock:
    """A KCM socket as a policy sees it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.rx_queued_bytes = 0

    def __repr__(self) -> str:
        return f"<sock {self.name} rx={self.rx_queued_bytes}>"


class FakeStream:
    """An attached stream as a policy sees it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.tx_queued_bytes = 0

    def __repr__(self) -> str:
        return f"<stream {self.name} tx={self.tx_queued_bytes}>"


def socks(n: int) -> list[FakeSock]:
    return [FakeSock(f"s{i}") for i in range(n)]


def streams(n: int) -> list[FakeStream]:
    return [FakeStream(f"t{i}") for i in range(n)]


class RxDriver:
    """Plays the mux's receive side against a policy."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy
        self.candidates: dict[FakeSock, None] = {}

    def add(self, *new: FakeSock) -> None:
        for sock in new:
            assert sock not in self.candidates
            self.candidates[sock] = None
            self.policy.socket_added(sock)

    def remove(self, sock: FakeSock) -> None:
        del self.candidates[sock]
        self.policy.socket_removed(sock)

    def pick(self, stream: FakeStream | None, message: bytes = b"m") -> FakeSock | None:
        sock = self.policy.pick_socket(stream, message)
        if not self.candidates:
            assert sock is None
            return None
        # A built-in never holds a message while some socket can take it.
        assert sock in self.candidates, (sock, list(self.candidates))
        sock.rx_queued_bytes += len(message)
        return sock

    def read(self, stream: FakeStream | None, count: int, size: int = 1) -> list[FakeSock | None]:
        """One read's batch: ``count`` picks, then ``read_done``."""
        picked = [self.pick(stream, b"x" * size) for _ in range(count)]
        self.policy.read_done(stream)
        return picked

    def drain(self, sock: FakeSock, nbytes: int) -> None:
        assert 0 < nbytes <= sock.rx_queued_bytes
        sock.rx_queued_bytes -= nbytes
        self.policy.socket_drained(sock, nbytes)


class TxDriver:
    """Plays the mux's transmit side against a policy.

    Groups queue on the picked stream; ``write`` finishes the oldest one and,
    like the mux, calls ``released`` when the sender has nothing left there.
    """

    def __init__(self, policy: Any) -> None:
        self.policy = policy
        self.candidates: dict[FakeStream, None] = {}
        self.queued: dict[FakeStream, deque[tuple[FakeSock, int]]] = {}

    def add(self, *new: FakeStream) -> None:
        for stream in new:
            self.candidates[stream] = None
            self.queued[stream] = deque()
            self.policy.stream_added(stream)

    def remove(self, stream: FakeStream) -> None:
        del self.candidates[stream]
        self.policy.stream_removed(stream)
        stream.tx_queued_bytes = 0  # its groups go elsewhere; the policy hears no more of it
        self.queued[stream].clear()

    def pick(self, sock: FakeSock, messages: Sequence[bytes] = (b"m",)) -> FakeStream | None:
        nbytes = sum(map(len, messages))
        stream = self.policy.pick_stream(sock, messages, nbytes)
        if not self.candidates:
            assert stream is None
            return None
        assert stream in self.candidates, (stream, list(self.candidates))
        stream.tx_queued_bytes += nbytes
        self.queued[stream].append((sock, nbytes))
        return stream

    def write(self, stream: FakeStream) -> None:
        """The stream's oldest group was written."""
        sock, nbytes = self.queued[stream].popleft()
        stream.tx_queued_bytes -= nbytes
        self.policy.written(stream, sock, nbytes, 0.001)
        if all(s is not sock for s, _ in self.queued[stream]):
            self.policy.released(stream, sock)

    def write_all(self, stream: FakeStream) -> None:
        while self.queued[stream]:
            self.write(stream)


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


async def read_frames(peer: PeerReader, count: int) -> list[bytes]:
    """The peer's next ``count`` frames; fails rather than hangs if they never come."""
    with trio.fail_after(10):
        return await peer.read_frames(count)


# ---------------------------------------------------------------------------
# the registry


def test_available_policies_lists_the_builtins() -> None:
    names = trio_kcm.available_policies()
    assert set(BUILTINS) <= set(names)
    assert names == sorted(names)


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_load_builtin_policy(name: str) -> None:
    policy = trio_kcm.load_policy(name)
    assert type(policy) is BUILTINS[name]
    assert isinstance(policy, trio_kcm.Policy)
    assert policy.name == name
    # A policy object serves one mux: each load builds a new one.
    assert trio_kcm.load_policy(name) is not policy


def test_load_unknown_policy() -> None:
    with pytest.raises(trio_kcm.PolicyLoadError, match="no-such-policy") as info:
        trio_kcm.load_policy("no-such-policy")
    assert info.value.name == "no-such-policy"
    assert "round-robin" in str(info.value)  # it says what is installed
    assert isinstance(info.value, LookupError)


def test_builtin_policy_given_unknown_options() -> None:
    with pytest.raises(trio_kcm.PolicyLoadError, match="round-robin") as info:
        trio_kcm.load_policy("round-robin", no_such_option=1)
    assert info.value.name == "round-robin"
    assert isinstance(info.value.__cause__, TypeError)


FAKEPLUG_MOD = '''
"""A third party's policy module (written at test time)."""
import trio_kcm


class FactoryError(Exception):
    pass


def make(**options):
    raise FactoryError("the factory is broken")


def not_a_policy(**options):
    return object()


class Good(trio_kcm.Policy):
    """Sticky: always the first candidate added (that is still one)."""

    def __init__(self, **options):
        self.options = options
        self.sockets = []
        self.streams = []
        self.events = []

    def socket_added(self, sock):
        self.sockets.append(sock)

    def socket_removed(self, sock):
        self.sockets.remove(sock)

    def pick_socket(self, stream, message):
        self.events.append("pick_socket")
        return self.sockets[0] if self.sockets else None

    def stream_added(self, stream):
        self.streams.append(stream)

    def stream_removed(self, stream):
        self.streams.remove(stream)

    def pick_stream(self, sock, messages, nbytes):
        self.events.append("pick_stream")
        return self.streams[0] if self.streams else None
'''

FAKE_MODULES = ("fakeplug_mod", "fakeplug_missing_module")


@pytest.fixture
def fakeplug(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A broken-and-working third-party distribution, installed on sys.path."""
    (tmp_path / "fakeplug_mod.py").write_text(textwrap.dedent(FAKEPLUG_MOD))
    info = tmp_path / "fakeplug-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplug\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[trio_kcm.policies]\n"
        "broken = fakeplug_missing_module:Nope\n"
        "raises = fakeplug_mod:make\n"
        "good = fakeplug_mod:Good\n"
        "not-a-policy = fakeplug_mod:not_a_policy\n"
    )
    for name in FAKE_MODULES:
        sys.modules.pop(name, None)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in FAKE_MODULES:
        sys.modules.pop(name, None)


def test_plugin_policies_are_listed_without_importing(fakeplug: Path) -> None:
    names = trio_kcm.available_policies()
    assert {"broken", "raises", "good", "not-a-policy"} <= set(names)
    assert set(BUILTINS) <= set(names)
    assert names == sorted(names)
    assert "fakeplug_mod" not in sys.modules


def test_plugin_that_fails_to_import(fakeplug: Path) -> None:
    with pytest.raises(trio_kcm.PolicyLoadError, match="broken") as info:
        trio_kcm.load_policy("broken")
    assert info.value.name == "broken"
    assert isinstance(info.value.__cause__, ImportError)
    assert "fakeplug_missing_module" in str(info.value)


def test_plugin_whose_factory_raises(fakeplug: Path) -> None:
    with pytest.raises(trio_kcm.PolicyLoadError, match="raises") as info:
        trio_kcm.load_policy("raises", some="option")
    assert info.value.name == "raises"
    cause = info.value.__cause__
    assert type(cause) is sys.modules["fakeplug_mod"].FactoryError
    assert str(cause) == "the factory is broken"


def test_plugin_that_builds_something_else(fakeplug: Path) -> None:
    with pytest.raises(trio_kcm.PolicyLoadError, match="not a policy") as info:
        trio_kcm.load_policy("not-a-policy")
    assert info.value.name == "not-a-policy"


def test_plugin_options_are_passed_through(fakeplug: Path) -> None:
    policy: Any = trio_kcm.load_policy("good", weight=3, label="x")
    assert type(policy) is sys.modules["fakeplug_mod"].Good
    assert isinstance(policy, trio_kcm.Policy)
    assert policy.name == "good"
    assert policy.options == {"weight": 3, "label": "x"}
    assert trio_kcm.load_policy("good").options == {}  # type: ignore[attr-defined]


async def test_broken_plugin_fails_open_mux(fakeplug: Path) -> None:
    for name in ("broken", "raises"):
        with pytest.raises(trio_kcm.PolicyLoadError) as info:
            async with trio_kcm.open_mux(parser=P, policy=name):
                pytest.fail("opened with a broken policy")  # pragma: no cover
        assert info.value.name == name
    with pytest.raises(trio_kcm.PolicyLoadError):
        async with trio_kcm.open_mux(parser=P, tx_policy="broken"):
            pytest.fail("opened with a broken policy")  # pragma: no cover


async def test_plugin_policy_works_in_a_real_mux(fakeplug: Path) -> None:
    async with trio_kcm.open_mux(parser=P, policy="good") as mux:
        policy: Any = mux.rx_policy
        assert mux.tx_policy is policy
        assert type(policy).__name__ == "Good" and policy.name == "good"
        pairs = [trio.testing.memory_stream_pair() for _ in range(2)]
        for ours, _ in pairs:
            mux.attach(ours)
        s0, s1 = mux.socket(), mux.socket()
        await pairs[1][1].send_all(b"".join(frame(b"%d" % i) for i in range(6)))
        await trio.testing.wait_all_tasks_blocked()
        # Sticky: everything to the first socket, out on the first stream.
        assert s0.receive_many_nowait(100) == [frame(b"%d" % i) for i in range(6)]
        with pytest.raises(trio.WouldBlock):
            s1.receive_nowait()
        for i in range(4):
            await (s0 if i % 2 else s1).send(frame(b"out%d" % i))
        assert await read_frames(PeerReader(pairs[0][1]), 4) == [
            frame(b"out%d" % i) for i in range(4)
        ]
        assert policy.events.count("pick_socket") == 6
        assert policy.events.count("pick_stream") == 4


# ---------------------------------------------------------------------------
# in a real mux: receive


async def test_round_robin_spreads_one_read_evenly() -> None:
    async with trio_kcm.open_mux(parser=P, policy="round-robin") as mux:
        assert type(mux.rx_policy) is RoundRobin
        ours, peer = trio.testing.memory_stream_pair()
        mux.attach(ours)
        sockets = [mux.socket() for _ in range(4)]
        messages = [frame(b"message %03d" % i) for i in range(400)]
        await peer.send_all(b"".join(messages))  # one write
        await trio.testing.wait_all_tasks_blocked()
        for k, sock in enumerate(sockets):
            assert sock.statistics().rx_queued_msgs == 100
            # ... and in turn: socket k has messages k, k+4, k+8, ...
            assert sock.receive_many_nowait(1000) == messages[k::4]
        assert mux.statistics().rx_msgs == 400


async def test_batch_affinity_one_read_per_socket_in_turn() -> None:
    async with trio_kcm.open_mux(parser=P, policy="batch-affinity") as mux:
        assert type(mux.rx_policy) is BatchAffinity
        pairs = [trio.testing.memory_stream_pair() for _ in range(2)]
        for ours, _ in pairs:
            mux.attach(ours)
        sockets = [mux.socket() for _ in range(4)]
        writes = []
        for w in range(10):
            batch = [frame(b"read %d message %d" % (w, i)) for i in range(7)]
            writes.append(batch)
            # Alternate the streams: the line of sockets is the mux's, not a stream's.
            await pairs[w % 2][1].send_all(b"".join(batch))
            await trio.testing.wait_all_tasks_blocked()
            counts = [s.statistics().rx_queued_msgs for s in sockets]
            expected = [7 * len(range(k, w + 1, 4)) for k in range(4)]
            assert counts == expected, (w, counts)
        for k, sock in enumerate(sockets):
            got = sock.receive_many_nowait(1000)
            assert got == [m for batch in writes[k::4] for m in batch]


async def test_batch_affinity_is_the_default() -> None:
    async with trio_kcm.open_mux(parser=P) as mux:
        assert type(mux.rx_policy) is BatchAffinity
        assert mux.tx_policy is mux.rx_policy
        assert mux.rx_policy.name == "batch-affinity"


async def test_batch_affinity_full_socket_passes_the_rest_of_the_read_on() -> None:
    async with trio_kcm.open_mux(parser=P, policy="batch-affinity") as mux:
        ours, peer = trio.testing.memory_stream_pair()
        mux.attach(ours)
        small = mux.socket(receive_buffer_size=30)  # full after 3 messages of 10 bytes
        big = mux.socket()
        third = mux.socket()
        messages = [frame(b"%06d" % i) for i in range(8)]
        await peer.send_all(b"".join(messages))
        await trio.testing.wait_all_tasks_blocked()
        assert small.receive_many_nowait(100) == messages[:3]
        assert big.receive_many_nowait(100) == messages[3:]
        with pytest.raises(trio.WouldBlock):
            third.receive_nowait()


async def test_least_queued_keeps_sockets_within_one_message() -> None:
    async with trio_kcm.open_mux(parser=P, policy="least-queued") as mux:
        assert type(mux.rx_policy) is LeastQueued
        ours, peer = trio.testing.memory_stream_pair()
        mux.attach(ours)
        sockets = [mux.socket() for _ in range(4)]
        await peer.send_all(b"".join(frame(b"%04d" % i) for i in range(402)))
        await trio.testing.wait_all_tasks_blocked()
        counts = [s.statistics().rx_queued_msgs for s in sockets]
        assert sum(counts) == 402
        assert max(counts) - min(counts) <= 1
        # The first socket's worker catches up: it is the emptiest, so it gets
        # new messages until it is level with the others again.
        taken = len(sockets[0].receive_many_nowait(1000))
        assert taken == counts[0]
        total = 4 * 110
        await peer.send_all(b"".join(frame(b"%04d" % i) for i in range(total - 402 + taken)))
        await trio.testing.wait_all_tasks_blocked()
        assert [s.statistics().rx_queued_msgs for s in sockets] == [110] * 4
        for _ in range(5):
            await peer.send_all(frame(b"more"))
            await trio.testing.wait_all_tasks_blocked()
            counts = [s.statistics().rx_queued_msgs for s in sockets]
            assert max(counts) - min(counts) <= 1, counts


# ---------------------------------------------------------------------------
# in a real mux: transmit


def _attach_peers(mux: trio_kcm.Mux, n: int) -> list[PeerReader]:
    peers = []
    for _ in range(n):
        ours, peer = trio.testing.memory_stream_pair()
        mux.attach(ours)
        peers.append(PeerReader(peer))
    return peers


@pytest.mark.parametrize("nstreams", [2, 3])
async def test_round_robin_sends_alternate_streams(nstreams: int) -> None:
    async with trio_kcm.open_mux(parser=P, policy="round-robin") as mux:
        assert type(mux.tx_policy) is RoundRobin
        peers = _attach_peers(mux, nstreams)
        a = mux.socket()
        b = a.clone()
        messages = [frame(b"out %02d" % i) for i in range(4 * nstreams)]
        for i, m in enumerate(messages):
            await (a if i % 3 else b).send(m)  # the turn is the mux's, not a socket's
        for k, peer in enumerate(peers):
            assert await read_frames(peer, 4) == messages[k::nstreams]


async def test_round_robin_a_batch_is_one_group() -> None:
    async with trio_kcm.open_mux(parser=P, policy="round-robin") as mux:
        peers = _attach_peers(mux, 2)
        sock = mux.socket()
        await sock.send_many([frame(b"g1a"), frame(b"g1b"), frame(b"g1c")])
        await sock.send(frame(b"g2"))
        async with sock.batch():
            await sock.send(frame(b"g3a"))
            await sock.send(frame(b"g3b"))
        await sock.send(frame(b"g4"))
        assert await read_frames(peers[0], 5) == [
            frame(b"g1a"),
            frame(b"g1b"),
            frame(b"g1c"),
            frame(b"g3a"),
            frame(b"g3b"),
        ]
        assert await read_frames(peers[1], 2) == [frame(b"g2"), frame(b"g4")]


async def test_batch_affinity_burst_stays_on_its_stream() -> None:
    async with trio_kcm.open_mux(parser=P, policy="batch-affinity") as mux:
        peers = _attach_peers(mux, 2)
        x = mux.socket()
        y = mux.socket()
        # No checkpoint between these: x's burst is all queued while x holds
        # its reservation, and y's burst takes the other stream.
        burst_x = [frame(b"x1 %d" % i) for i in range(5)]
        burst_y = [frame(b"y1 %d" % i) for i in range(3)]
        for m in burst_x:
            x.send_nowait(m)
        for m in burst_y:
            y.send_nowait(m)
        assert await read_frames(peers[0], 5) == burst_x
        assert await read_frames(peers[1], 3) == burst_y
        await trio.testing.wait_all_tasks_blocked()  # written: both released
        burst_x2 = [frame(b"x2 %d" % i) for i in range(4)]
        for m in burst_x2:
            x.send_nowait(m)
        # x's next burst takes the stream picked longest ago.
        assert await read_frames(peers[0], 4) == burst_x2
        stats = [h.statistics() for h in mux.streams]
        assert [s.tx_msgs for s in stats] == [9, 3]


async def test_least_queued_transmit_in_a_real_mux() -> None:
    async with trio_kcm.open_mux(parser=P, policy="least-queued") as mux:
        peers = _attach_peers(mux, 2)
        sock = mux.socket()
        big = frame(b"B" * 1000)
        small = [frame(b"s%d" % i) for i in range(6)]
        sock.send_nowait(big)  # stream 0: 1004 bytes queued
        for m in small:  # all smaller in total than the big one: stream 1
            sock.send_nowait(m)
        assert await read_frames(peers[0], 1) == [big]
        assert await read_frames(peers[1], 6) == small
        await trio.testing.wait_all_tasks_blocked()
        # Both empty again: equal loads alternate.
        more = [frame(b"m%d" % i) for i in range(6)]
        for m in more:
            sock.send_nowait(m)
        got0 = await read_frames(peers[0], 3)
        got1 = await read_frames(peers[1], 3)
        assert sorted(got0 + got1) == sorted(more)
        assert {tuple(got0), tuple(got1)} == {tuple(more[0::2]), tuple(more[1::2])}


async def test_rx_and_tx_policy_override_one_side_each() -> None:
    async with trio_kcm.open_mux(parser=P, policy="round-robin", tx_policy="least-queued") as mux:
        assert type(mux.rx_policy) is RoundRobin
        assert type(mux.tx_policy) is LeastQueued
        assert mux.rx_policy.name == "round-robin"
        assert mux.tx_policy.name == "least-queued"
    async with trio_kcm.open_mux(parser=P, rx_policy="least-queued") as mux:
        assert type(mux.rx_policy) is LeastQueued
        assert type(mux.tx_policy) is BatchAffinity  # the default policy
    rx, tx = RoundRobin(), BatchAffinity()
    async with trio_kcm.open_mux(parser=P, rx_policy=rx, tx_policy=tx) as mux:
        assert mux.rx_policy is rx
        assert mux.tx_policy is tx
        # They act on their own side: rx round-robin, tx sticky per burst.
        ours, peer = trio.testing.memory_stream_pair()
        mux.attach(ours)
        ours2, _peer2 = trio.testing.memory_stream_pair()
        mux.attach(ours2)
        a, b = mux.socket(), mux.socket()
        await peer.send_all(b"".join(frame(b"%d" % i) for i in range(4)))
        await trio.testing.wait_all_tasks_blocked()
        assert a.receive_many_nowait(10) == [frame(b"0"), frame(b"2")]
        assert b.receive_many_nowait(10) == [frame(b"1"), frame(b"3")]
        for i in range(3):
            a.send_nowait(frame(b"t%d" % i))
        assert await read_frames(PeerReader(peer), 3) == [frame(b"t%d" % i) for i in range(3)]
    both = LeastQueued()
    async with trio_kcm.open_mux(parser=P, policy=both) as mux:
        assert mux.rx_policy is both
        assert mux.tx_policy is both


# ---------------------------------------------------------------------------
# a policy that raises is a bug: it comes out of open_mux


class PolicyBug(Exception):
    pass


class RaisingRx(RoundRobin):
    def pick_socket(self, stream: Any, message: bytes, /) -> Any:
        raise PolicyBug("pick_socket bug")


class RaisingTx(RoundRobin):
    def pick_stream(self, sock: Any, messages: Sequence[bytes], nbytes: int, /) -> Any:
        raise PolicyBug("pick_stream bug")


def _leaves(group: BaseException) -> list[BaseException]:
    if isinstance(group, BaseExceptionGroup):
        return [leaf for e in group.exceptions for leaf in _leaves(e)]
    return [group]


async def test_pick_socket_raising_comes_out_of_open_mux() -> None:
    with trio.fail_after(10):  # a guard: the test must not hang if it is swallowed
        with pytest.RaisesGroup(
            pytest.RaisesExc(PolicyBug, match="pick_socket bug"), flatten_subgroups=True
        ):
            async with trio_kcm.open_mux(parser=P, policy=RaisingRx()) as mux:
                ours, peer = trio.testing.memory_stream_pair()
                mux.attach(ours)
                sock = mux.socket()
                await peer.send_all(frame(b"boom"))
                await sock.receive()  # the reader crashes; this is cancelled
                pytest.fail("a message was delivered")  # pragma: no cover


async def test_pick_socket_raising_in_a_user_task() -> None:
    # Messages waiting in the mux are steered when a socket is made: the
    # policy's exception comes out of mux.socket() and out of open_mux.
    policy = RoundRobin()
    with pytest.RaisesGroup(
        pytest.RaisesExc(PolicyBug, match="pick_socket bug"), flatten_subgroups=True
    ) as info:
        async with trio_kcm.open_mux(parser=P, policy=policy) as mux:
            ours, peer = trio.testing.memory_stream_pair()
            mux.attach(ours)
            sock = mux.socket()
            other = mux.socket()
            await peer.send_all(frame(b"a") + frame(b"b"))
            await trio.testing.wait_all_tasks_blocked()
            assert other.statistics().rx_queued_msgs == 1
            policy.pick_socket = RaisingRx().pick_socket  # type: ignore[method-assign]
            with pytest.raises(PolicyBug) as raised:
                sock.disable_receive()  # its message moves: the policy is asked
            await trio.testing.wait_all_tasks_blocked()
            pytest.fail("the policy's exception was swallowed")  # pragma: no cover
    assert raised.value in _leaves(info.value)


async def test_pick_stream_raising_comes_out_of_send_and_open_mux() -> None:
    with trio.fail_after(10):
        with pytest.RaisesGroup(
            pytest.RaisesExc(PolicyBug, match="pick_stream bug"), flatten_subgroups=True
        ) as info:
            async with trio_kcm.open_mux(parser=P, policy=RaisingTx()) as mux:
                ours, _peer = trio.testing.memory_stream_pair()
                mux.attach(ours)
                sock = mux.socket()
                with pytest.raises(PolicyBug, match="pick_stream bug") as raised:
                    await sock.send(frame(b"x"))
                # The body goes on as if nothing happened; the mux does not.
    assert raised.value in _leaves(info.value)


async def test_pick_stream_raising_in_attach_comes_out_of_open_mux() -> None:
    # A group waits in the socket (no stream); attaching a stream makes the
    # mux pick for it, in attach() -- a user task.
    with pytest.RaisesGroup(
        pytest.RaisesExc(PolicyBug, match="pick_stream bug"), flatten_subgroups=True
    ):
        async with trio_kcm.open_mux(parser=P, policy=RaisingTx()) as mux:
            sock = mux.socket()
            await sock.send(frame(b"waits"))
            ours, _peer = trio.testing.memory_stream_pair()
            with pytest.raises(PolicyBug):
                mux.attach(ours)
            await trio.testing.wait_all_tasks_blocked()
            pytest.fail("the policy's exception was swallowed")  # pragma: no cover


async def test_pick_returning_a_non_candidate_is_a_bug() -> None:
    class Wrong(RoundRobin):
        target: Any = None

        def pick_socket(self, stream: Any, message: bytes, /) -> Any:
            return self.target

    policy = Wrong()
    with (
        trio.fail_after(10),
        pytest.RaisesGroup(
            pytest.RaisesExc(RuntimeError, match="not a receive candidate"), flatten_subgroups=True
        ),
    ):
        async with trio_kcm.open_mux(parser=P, policy=policy) as mux:
            ours, peer = trio.testing.memory_stream_pair()
            mux.attach(ours)
            sock = mux.socket()
            policy.target = mux.socket()
            policy.target.disable_receive()  # not a candidate
            await peer.send_all(frame(b"x"))
            await sock.receive()
            pytest.fail("a message was delivered")  # pragma: no cover


async def test_pick_stream_raising_in_the_writer_comes_out_of_open_mux() -> None:
    # The holder's first group is held (None); a write on the stream makes the
    # mux pick for it again, from the stream's writer task: then it raises.
    class HoldsThenRaises(RoundRobin):
        holder: Any = None
        asked = 0

        def pick_stream(self, sock: Any, messages: Sequence[bytes], nbytes: int, /) -> Any:
            if sock is self.holder:
                self.asked += 1
                if self.asked == 1:
                    return None
                raise PolicyBug("pick_stream bug")
            return super().pick_stream(sock, messages, nbytes)

    policy = HoldsThenRaises()
    with trio.fail_after(10):
        with pytest.RaisesGroup(
            pytest.RaisesExc(PolicyBug, match="pick_stream bug"), flatten_subgroups=True
        ):
            async with trio_kcm.open_mux(parser=P, policy=policy) as mux:
                ours, peer = trio.testing.memory_stream_pair()
                mux.attach(ours)
                holder = policy.holder = mux.socket()
                sender = mux.socket()
                await holder.send(frame(b"held"))
                assert policy.asked == 1
                await sender.send(frame(b"goes"))
                assert await read_frames(PeerReader(peer), 1) == [frame(b"goes")]
                await trio.testing.wait_all_tasks_blocked()
                pytest.fail("the policy's exception was swallowed")  # pragma: no cover
        assert policy.asked == 2


def _error_of(kind: str) -> BaseException:
    return {
        "PolicyBug": PolicyBug("policy bug"),
        "OSError": OSError(errno.EIO, "policy bug"),
        "ClosedResourceError": trio.ClosedResourceError("policy bug"),
    }[kind]


@pytest.mark.parametrize("kind", ["PolicyBug", "OSError", "ClosedResourceError"])
@pytest.mark.parametrize("where", ["reader", "send", "disable_receive"])
async def test_any_exception_from_a_policy_comes_out_of_open_mux(
    where: str, kind: str, autojump_clock: trio.testing.MockClock
) -> None:
    """Whatever the policy raises, and whichever task it raises in, it is a
    bug of the policy's: open_mux must not swallow it (the spec: "never
    swallowed"), even when it is an exception type the mux also uses itself."""

    class Raises(RoundRobin):
        armed = False

        def pick_socket(self, stream: Any, message: bytes, /) -> Any:
            if self.armed:
                raise _error_of(kind)
            return super().pick_socket(stream, message)

        def pick_stream(self, sock: Any, messages: Sequence[bytes], nbytes: int, /) -> Any:
            if self.armed:
                raise _error_of(kind)
            return super().pick_stream(sock, messages, nbytes)

    policy = Raises()
    expected = type(_error_of(kind))
    with trio.fail_after(60):  # virtual time: close_timeout is 5 s
        with pytest.RaisesGroup(
            pytest.RaisesExc(expected, match="policy bug"), flatten_subgroups=True
        ):
            async with trio_kcm.open_mux(parser=P, policy=policy) as mux:
                ours, peer = trio.testing.memory_stream_pair()
                mux.attach(ours)
                sock = mux.socket()
                other = mux.socket()
                if where == "reader":
                    policy.armed = True
                    await peer.send_all(frame(b"in"))
                elif where == "send":
                    policy.armed = True
                    with pytest.raises(expected):
                        await sock.send(frame(b"out"))
                else:
                    await peer.send_all(frame(b"a") + frame(b"b"))
                    await trio.testing.wait_all_tasks_blocked()
                    assert other.statistics().rx_queued_msgs == 1
                    policy.armed = True
                    with pytest.raises(expected):
                        sock.disable_receive()
                await trio.testing.wait_all_tasks_blocked()


class _TimedRoundRobin(RoundRobin):
    """round-robin that records what written() is told."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []

    def written(
        self,
        stream: trio_kcm.AttachedStream,
        sock: trio_kcm.KCMSocket,
        nbytes: int,
        seconds: float,
        /,
    ) -> None:
        self.seconds.append(seconds)


async def test_written_is_told_how_long_a_group_took_from_its_pick(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A policy that overrides written() gets each group's time from pick to
    # written (the mux times groups only for such a policy).
    policy = _TimedRoundRobin()
    ours, peer = trio.testing.lockstep_stream_pair()
    async with trio_kcm.open_mux(parser=P, policy=policy) as mux:
        mux.attach(ours)
        sock = mux.socket()
        await sock.send(frame(b"slow"))  # the peer reads 5 s later
        await trio.sleep(5)
        assert await PeerReader(peer).read_frames(1) == [frame(b"slow")]
        await trio.testing.wait_all_tasks_blocked()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(PeerReader(peer).read_frames, 1)
            await sock.send(frame(b"fast"))  # the peer is reading
        await trio.testing.wait_all_tasks_blocked()
    assert policy.seconds == [pytest.approx(5.0), pytest.approx(0.0)]
