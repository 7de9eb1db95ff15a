"""``weighted-round-robin``: shares follow weights, smoothly, newcomers fairly."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from kcm_policy_testkit import (
    PARSER,
    FakeSock,
    FakeStream,
    RxDriver,
    TxDriver,
    attach_peers,
    frame,
    socks,
    streams,
)
from trio_kcm_policies import WeightedRoundRobin

import trio_kcm


def picks(rx: RxDriver, count: int) -> list[int]:
    """``count`` picks, each received at once (nobody fills up)."""
    out = []
    for _ in range(count):
        sock = rx.pick(None)
        assert sock is not None
        rx.receive(sock, 1)
        out.append(sock.index)
    return out


def longest_run(sequence: list[int], cyclic: bool = False) -> dict[int, int]:
    if cyclic:
        sequence = sequence + sequence
    out: dict[int, int] = {}
    for item, group in itertools.groupby(sequence):
        out[item] = max(out.get(item, 0), len(list(group)))
    return out


def driver(weights: dict[int, float], n: int) -> tuple[RxDriver, list[FakeSock]]:
    rx = RxDriver(WeightedRoundRobin(socket_weights=weights))
    pool = socks(n)
    rx.add(*pool)
    return rx, pool


# ---------------------------------------------------------------------------
# shares and smoothness


def test_five_one_one_is_interleaved_not_a_burst() -> None:
    rx, _ = driver({0: 5}, 3)
    seq = picks(rx, 21)
    assert "".join("abc"[i] for i in seq) == "abaacaa" * 3
    # Never more than three a's in a row, even across rounds (nginx's
    # sequence, a a b a c a a, has four across rounds; a list with a five
    # times, a a a a a b c, has five).
    assert longest_run(seq[:7], cyclic=True) == {0: 3, 1: 1, 2: 1}


def test_equal_weights_are_plain_round_robin() -> None:
    rx, _ = driver({}, 4)
    assert picks(rx, 12) == [0, 1, 2, 3] * 3


@pytest.mark.parametrize(
    "weights",
    [[1, 2], [3, 1, 1], [10, 1], [1, 1, 1, 7], [2.5, 1.0, 0.5], [100, 1, 1]],
)
def test_each_member_within_one_pick_of_its_share_at_every_point(weights: list[float]) -> None:
    rx, _ = driver(dict(enumerate(weights)), len(weights))
    total = sum(weights)
    counts = Counter[int]()
    for t, index in enumerate(picks(rx, 2000), start=1):
        counts[index] += 1
        for i, w in enumerate(weights):
            assert abs(counts[i] - t * w / total) < 1.0, (t, i, counts)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 12), min_size=1, max_size=8))
def test_property_integer_weights_exact_per_round_and_smooth(weights: list[int]) -> None:
    rx, _ = driver(dict(enumerate(weights)), len(weights))
    total = sum(weights)
    seq = picks(rx, 3 * total)
    # Each round of W picks gives each member exactly its weight.
    for r in range(3):
        assert Counter(seq[r * total : (r + 1) * total]) == {i: w for i, w in enumerate(weights)}
    # Any window of L picks gives member i within 2 of L * w / W: no bursts.
    for length in {1, 2, 3, total // 2, total}:
        if length < 1:
            continue
        for start in range(len(seq) - length + 1):
            window = Counter(seq[start : start + length])
            for i, w in enumerate(weights):
                assert abs(window[i] - length * w / total) < 2.0, (start, length, i)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.floats(0.1, 20.0), min_size=2, max_size=6),
    st.lists(st.tuples(st.integers(0, 5), st.integers(1, 40)), max_size=12),
)
def test_property_shares_hold_between_membership_changes(
    weights: list[float], changes: list[tuple[int, int]]
) -> None:
    """Toggle a member (full or disabled, then back), then run a while: in
    every stretch of fixed membership each member gets its share within 2."""
    n = len(weights)
    rx, pool = driver(dict(enumerate(weights)), n)
    for who, run in [(None, 30), *changes]:
        if who is not None and who < n:
            if pool[who] in rx.candidates:
                rx.disable(pool[who])
            else:
                rx.add(pool[who])
        live = [s.index for s in rx.candidates]
        if not live:
            assert rx.pick(None) is None
            continue
        total = sum(weights[i] for i in live)
        counts = Counter[int]()
        for t, index in enumerate(picks(rx, run), start=1):
            assert index in live
            counts[index] += 1
            for i in live:
                assert abs(counts[i] - t * weights[i] / total) < 2.0, (t, i, counts)


# ---------------------------------------------------------------------------
# joining and coming back


def test_a_newcomer_joins_now_no_burst_no_wait() -> None:
    rx, _ = driver({}, 3)
    picks(rx, 1000)  # long history: virtual time far on
    late = FakeSock(3)
    rx.add(late)
    seq = picks(rx, 40)
    # Its share from now on (a quarter), spread out: not 1000 picks of
    # "catching up", and not starved until the others' counts fall back.
    assert 3 in seq[:4]
    assert Counter(seq)[3] == 10
    assert longest_run(seq)[3] == 1


def test_a_heavy_newcomer_gets_its_share_smoothly() -> None:
    rx, _ = driver({3: 6}, 3)
    picks(rx, 999)
    rx.add(FakeSock(3))
    seq = picks(rx, 90)
    assert Counter(seq) == {3: 60, 0: 10, 1: 10, 2: 10}
    assert longest_run(seq)[3] <= 3


def test_a_socket_back_from_full_is_not_rushed() -> None:
    policy = WeightedRoundRobin()
    rx = RxDriver(policy)
    slow = FakeSock(0, receive_buffer_size=2)
    fast = FakeSock(1)
    rx.add(slow, fast)
    seq = []
    for _ in range(4):
        sock = rx.pick(None)
        assert sock is not None
        seq.append(sock.index)
        if sock is fast:
            rx.receive(fast, 1)
    assert seq == [0, 1, 0, 1]
    assert slow not in rx.candidates  # full: everything goes to fast meanwhile
    assert picks(rx, 50) == [1] * 50
    rx.receive(slow, 2)  # back: no burst of 50 to make up for the wait
    assert picks(rx, 10) in ([0, 1] * 5, [1, 0] * 5)


def test_weights_by_function_are_asked_each_time_a_socket_comes_back() -> None:
    weights = {0: 1.0, 1: 1.0}
    asked: list[int] = []

    def weight(sock: Any) -> float:
        asked.append(sock.index)
        return weights[sock.index]

    rx = RxDriver(WeightedRoundRobin(socket_weights=weight))
    a, b = socks(2)
    rx.add(a, b)
    assert Counter(picks(rx, 10)) == {0: 5, 1: 5}
    weights[0] = 4.0
    rx.disable(a)
    rx.add(a)
    assert asked == [0, 1, 0]
    assert Counter(picks(rx, 50)) == {0: 40, 1: 10}


def test_heaps_stay_small_under_churn() -> None:
    policy = WeightedRoundRobin(socket_weights={0: 3, 2: 2})
    rx = RxDriver(policy)
    pool = socks(4)
    rx.add(*pool)
    for k in range(20_000):
        victim = pool[k % 4]
        if k % 3 == 0:
            if victim in rx.candidates:
                rx.disable(victim)
            else:
                rx.add(victim)
        if rx.candidates:
            picks(rx, 1)
        else:
            assert rx.pick(None) is None
        assert policy._rx.heap_size() <= 2 * 4 + 32 + 1


def test_heaps_stay_small_when_a_socket_flaps_between_picks() -> None:
    # Full, room, full, room... with no pick in between: each return pushes
    # an entry, and the stale ones must not pile up.
    policy = WeightedRoundRobin()
    rx = RxDriver(policy)
    a, b = socks(2)
    rx.add(a, b)
    for _ in range(10_000):
        rx.disable(a)
        rx.add(a)
    assert policy._rx.heap_size() <= 2 * 2 + 32 + 1
    assert Counter(picks(rx, 10)) == {0: 5, 1: 5}


# ---------------------------------------------------------------------------
# transmit


def test_transmit_weights_and_removal() -> None:
    tx = TxDriver(WeightedRoundRobin(stream_weights={1: 2}))
    t0, t1, t2 = streams(3)
    tx.add(t0, t1, t2)
    sender = FakeSock(0)
    seq = []
    for _ in range(40):
        stream = tx.pick(sender, [b"m"])
        assert stream is not None
        seq.append(stream.index)
        tx.write(stream)
    assert Counter(seq) == {0: 10, 1: 20, 2: 10}
    assert longest_run(seq)[1] <= 2
    tx.remove(t1)
    assert Counter(tx.pick(sender) for _ in range(10)) == {t0: 5, t2: 5}  # type: ignore[misc]
    # A new stream with index 1 is new: it gets its weight, not t1's past.
    new = FakeStream(1)
    tx.add(new)
    got = Counter(tx.pick(sender) for _ in range(40))
    assert got == {t0: 10, new: 20, t2: 10}
    for s in (t0, new, t2):
        tx.remove(s)
    assert tx.pick(sender) is None


# ---------------------------------------------------------------------------
# options


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match=r"socket_weights\[0\]= must be finite and > 0"):
        WeightedRoundRobin(socket_weights={0: 0})
    with pytest.raises(ValueError, match="must be finite and > 0"):
        WeightedRoundRobin(stream_weights={2: -1.5})
    with pytest.raises(ValueError, match="must be finite and > 0"):
        WeightedRoundRobin(stream_weights={2: math.nan})
    with pytest.raises(TypeError, match=r"stream_weights\[1\]= must be a number"):
        WeightedRoundRobin(stream_weights={1: "heavy"})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="keys must be indices"):
        WeightedRoundRobin(socket_weights={"a": 1})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="keys must be indices"):
        WeightedRoundRobin(socket_weights={-1: 1})
    with pytest.raises(TypeError, match="a mapping of index to weight, a function, or None"):
        WeightedRoundRobin(socket_weights=[1, 2])  # type: ignore[arg-type]
    # A weight function is checked on each answer; a bad one is a bug of the
    # policy's caller, raised from the event (and out of open_mux).
    policy = WeightedRoundRobin(socket_weights=lambda sock: 0.0)
    with pytest.raises(ValueError, match=r"socket_weights\(.*\) result= must be finite and > 0"):
        policy.socket_added(FakeSock(0))  # type: ignore[arg-type]
    with pytest.raises(trio_kcm.PolicyLoadError) as info:
        trio_kcm.load_policy("weighted-round-robin", weights={0: 2})
    assert isinstance(info.value.__cause__, TypeError)


def test_nothing_to_pick() -> None:
    policy = WeightedRoundRobin()
    assert policy.pick_socket(None, b"m") is None
    assert policy.pick_stream(FakeSock(0), [b"m"], 1) is None  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# in a real mux, loaded by name


async def test_by_name_in_a_real_mux_receive_and_transmit_follow_weights() -> None:
    policy = trio_kcm.load_policy(
        "weighted-round-robin", socket_weights={0: 3}, stream_weights={1: 2}
    )
    assert type(policy) is WeightedRoundRobin and policy.name == "weighted-round-robin"
    async with trio_kcm.open_mux(parser=PARSER, policy=policy) as mux:
        peers = attach_peers(mux, 2)
        heavy, light = mux.socket(), mux.socket()
        sent = [frame(b"in %03d" % i) for i in range(400)]
        await peers[0][1].send_all(b"".join(sent))
        await trio.testing.wait_all_tasks_blocked()
        got_heavy = heavy.receive_many_nowait(1000)
        got_light = light.receive_many_nowait(1000)
        assert (len(got_heavy), len(got_light)) == (300, 100)
        assert sorted(got_heavy + got_light) == sorted(sent)
        # Smooth: the light socket's messages are spread, one in every four.
        where = [0 if m in set(got_heavy) else 1 for m in sent]
        assert longest_run(where)[0] <= 3

        out = [frame(b"out %03d" % i) for i in range(90)]
        for m in out:
            await heavy.send(m)
        await trio.testing.wait_all_tasks_blocked()
        counts = [h.statistics().tx_msgs for h, _ in peers]
        assert counts == [30, 60]
        received = []
        for (_, peer), n in zip(peers, counts, strict=True):
            received += await peer.read_frames(n)
        assert sorted(received) == sorted(out)
